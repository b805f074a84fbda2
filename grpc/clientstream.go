package bulwarkgrpc

import (
	"context"
	"io"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// breakerStream is a client stream that tells its breaker how the stream
// went as soon as the server has shown it: by the first response (a
// message, or the header when the caller asks for it), a success; by the
// final status RecvMsg returns if the stream ends before any; by the end
// of the caller's context if that comes first. It does not wait for the
// stream's end: a long-lived stream (a watch) would hold a half-open
// breaker's probe for its whole life, and its life would be taken for
// the server's latency.
type breakerStream struct {
	grpc.ClientStream
	ctx      context.Context
	opts     []grpc.CallOption
	failure  *failureCodes
	done     func(error)
	reported atomic.Bool
	stop     func() bool
}

func newBreakerStream(ctx context.Context, cs grpc.ClientStream, opts []grpc.CallOption, done func(error), failure *failureCodes) *breakerStream {
	s := &breakerStream{ClientStream: cs, ctx: ctx, opts: opts, failure: failure, done: done}
	// A caller that abandons the stream by cancelling its context before
	// the first response never sees the final status; without this, a
	// half-open breaker would wait for the outcome of its probe for ever.
	s.stop = context.AfterFunc(ctx, func() { s.finish(contextStatus(ctx.Err())) })
	return s
}

// report tells the breaker from the caller's goroutine, once.
func (s *breakerStream) report(err error) {
	if s.reported.Load() {
		return
	}
	s.stop()
	s.finish(err)
}

// finish tells the breaker, once.
func (s *breakerStream) finish(err error) {
	if s.reported.CompareAndSwap(false, true) {
		s.done(s.failure.report(s.ctx, nil, s.opts, err))
	}
}

func (s *breakerStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if md != nil && err == nil {
		s.report(nil) // the server's header: it has taken the stream
	}
	return md, err
}

func (s *breakerStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == io.EOF {
		s.report(nil)
	} else {
		s.report(err) // nil for a message: the server answers
	}
	return err
}

func (s *breakerStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err != nil && err != io.EOF {
		// An error SendMsg returns other than io.EOF is the client's own
		// (a message it cannot marshal or that is too large): the stream
		// is over, and nothing was learnt of the server. io.EOF means the
		// stream ended; its status comes from RecvMsg.
		s.report(nil)
	}
	return err
}
