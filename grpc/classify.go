package bulwarkgrpc

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// defaultFailureCodes are those of WithFailureCodes' default.
var defaultFailureCodes = newFailureCodes(codes.Unavailable, codes.DeadlineExceeded, codes.Internal)

// failureCodes says, by status code, which errors count as failures.
type failureCodes [codes.Unauthenticated + 1]bool

func newFailureCodes(cs ...codes.Code) failureCodes {
	var f failureCodes
	for _, c := range cs {
		f[c] = true
	}
	return f
}

// failed reports whether err, the error of a call in ctx with call
// options opts, is a failure of the server: its status code is a failure
// code, it is not a refusal of this module's server interceptors (see
// refused), and gRPC did not raise it in the client before the call left
// (see unsent). req is the call's request, nil for a stream's
// opening. A nil error is not a failure; one that carries no status
// counts by its code, Unknown.
//
// The cost of looking further than the code falls on errors with a
// failure code only.
func (f *failureCodes) failed(ctx context.Context, req any, opts []grpc.CallOption, err error) bool {
	if err == nil {
		return false
	}
	c := status.Code(err)
	if int(c) >= len(f) || !f[c] {
		return false
	}
	st, _ := status.FromError(err)
	if refused(st) {
		return false
	}
	return c != codes.Internal || !unsent(ctx, req, opts)
}

// report returns what a breaker is told of a call in ctx that ended with
// err: err if it is a failure (see failed), or if the caller cancelled
// the call (which the breaker then ignores), else nil, an answer.
func (f *failureCodes) report(ctx context.Context, req any, opts []grpc.CallOption, err error) error {
	if err == nil || errors.Is(ctx.Err(), context.Canceled) || f.failed(ctx, req, opts, err) {
		return err
	}
	return nil
}

// refused reports whether st is a refusal of this module's server
// interceptors that says nothing against the server: its details hold an
// errdetails.ErrorInfo in [ErrorDomain] whose reason is one of the
// reasons below, whatever its code. The server was up and decided about
// this caller, by its quota, its place in line, its attributes or the
// server's own load, and asking again elsewhere would move the decision,
// not change it.
//
// [ReasonQueueUnavailable] is left out: it says this instance cannot hold
// anyone in line (its Redis is down, or it is shutting down), which
// another target may do, so it counts by its code like any failure.
func refused(st *status.Status) bool {
	for _, d := range st.Details() {
		info, ok := d.(*errdetails.ErrorInfo)
		if !ok || info.GetDomain() != ErrorDomain {
			continue
		}
		switch info.GetReason() {
		case ReasonRateLimited, ReasonLimiterUnavailable, ReasonOverloaded, ReasonDegraded,
			ReasonQueueFull, ReasonWaitTooLong, ReasonWaitTimeout:
			return true
		}
	}
	return false
}

// unsent reports whether gRPC refuses the call in ctx with opts in the
// client, before sending anything, with codes.Internal: the outgoing
// metadata is not valid (a key outside [0-9a-z-_.], a value outside
// printable ASCII under a key without -bin), the codec the call options
// name is not registered, or cannot marshal req, or the compressor they
// name is not registered. These depend on the call alone, so checking
// them again after the call failed tells a call that never left from a
// server's Internal, which gRPC cannot otherwise tell apart.
//
// It sees what the call's context and options show this interceptor:
// metadata or a codec that an interceptor or a connection's default call
// options add further down is not seen, and the call counts by its code.
func unsent(ctx context.Context, req any, opts []grpc.CallOption) bool {
	if md, ok := metadata.FromOutgoingContext(ctx); ok {
		for k, vs := range md {
			if !validMetadata(k, vs) {
				return true
			}
		}
	}
	var (
		codec   encoding.CodecV2
		codecV1 encoding.Codec
		subtype string
		forced  bool
	)
	for _, o := range opts {
		switch o := o.(type) {
		case grpc.ForceCodecV2CallOption:
			codec, codecV1, forced = o.CodecV2, nil, true
		case grpc.ForceCodecCallOption:
			codec, codecV1, forced = nil, o.Codec, true
		case grpc.CustomCodecCallOption:
			return false // a codec of the deprecated kind: not checked
		case grpc.ContentSubtypeCallOption:
			subtype = o.ContentSubtype
		case grpc.CompressorCallOption:
			if name := o.CompressorType; name != "" && name != encoding.Identity && encoding.GetCompressor(name) == nil {
				return true
			}
		}
	}
	if !forced {
		name := subtype
		if name == "" {
			name = proto.Name
		}
		// As gRPC looks a codec up: the older kind first.
		if codecV1 = encoding.GetCodec(name); codecV1 == nil {
			if codec = encoding.GetCodecV2(name); codec == nil {
				return true
			}
		}
	}
	if req == nil {
		return false
	}
	if codecV1 != nil {
		_, err := codecV1.Marshal(req)
		return err != nil
	}
	if codec == nil {
		return false
	}
	data, err := codec.Marshal(req)
	data.Free()
	return err != nil
}

// validMetadata reports whether gRPC sends the metadata key k with values
// vs, by the rules of its own check before a call.
func validMetadata(k string, vs []string) bool {
	if k == "" {
		return false
	}
	if k[0] == ':' {
		return true // a pseudo-header, which gRPC leaves alone
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	if isBinaryKey(k) {
		return true
	}
	for _, v := range vs {
		if !printable(v) {
			return false
		}
	}
	return true
}

// isBinaryKey reports whether k is a binary metadata key, whose values
// gRPC sends base64-encoded, any bytes at all.
func isBinaryKey(k string) bool {
	return len(k) >= 4 && k[len(k)-4:] == "-bin"
}

// printable reports whether v is printable ASCII, %x20-%x7E, which gRPC
// sends as it is under a key without -bin.
func printable(v string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}
