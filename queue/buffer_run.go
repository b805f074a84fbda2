package queue

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Run consumes the buffer's messages, calling h for each with up to
// [WithConcurrency] calls at once, and blocks until ctx is done or
// [Buffer.Close] is called. It never returns for a store failure: while
// Redis is unreachable it retries with a growing delay (up to half a second),
// and carries on when Redis is back.
//
// Stopping is graceful: Run stops taking messages, waits for the handlers
// already running to finish (their context is not cancelled; see
// [WithHandlerTimeout]), hands back any message it had taken but not
// started so another consumer can take it at once, and returns. No
// goroutine of Run outlives it. A stop can also wait up to the poll interval
// (see [WithBufferPollInterval]) for a read in progress to return.
//
// Run returns ctx's error when ctx ended it, [ErrClosed] after Close, an
// error matching [ErrInvalidConfig] for a nil h, and [ErrRunning] if
// another Run of this Buffer is under way.
func (b *Buffer) Run(ctx context.Context, h Handler) error {
	if h == nil {
		return configError("handler", "must not be nil", nil)
	}
	if b.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	switch {
	case b.closed.Load():
		b.mu.Unlock()
		return ErrClosed
	case b.running:
		b.mu.Unlock()
		return ErrRunning
	}
	loopCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	b.running, b.stopRun, b.runDone = true, stop, done
	b.mu.Unlock()

	r := &bufferRun{
		b:        b,
		h:        h,
		base:     context.WithoutCancel(ctx),
		sem:      make(chan struct{}, b.cfg.concurrency),
		inflight: make(map[string]struct{}),
		acks:     make(chan string, b.cfg.concurrency),
		ackDone:  make(chan struct{}),
		keepStop: make(chan struct{}),
		keepDone: make(chan struct{}),
	}
	go r.keepLeases()
	go r.acknowledge()
	// Deferred so that a panicking gate still leaves nothing running.
	defer func() {
		r.drain()
		stop()
		b.paused.Store(false)
		b.mu.Lock()
		b.running, b.stopRun, b.runDone = false, nil, nil
		b.mu.Unlock()
		close(done)
	}()
	r.loop(loopCtx)
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// bufferRun is the state of one Run.
type bufferRun struct {
	b    *Buffer
	h    Handler
	base context.Context // Run's context without its cancellation
	sem  chan struct{}   // one token per running handler
	wg   sync.WaitGroup  // running handlers

	mu       sync.Mutex
	inflight map[string]struct{} // entries whose handler runs, for lease renewal

	// dueHint is the earliest due time (unix ns) of a retry this consumer
	// scheduled since the loop last looked; 0 if none.
	dueHint atomic.Int64

	// acks carries entries whose handler succeeded to the acknowledge
	// goroutine; it never blocks, holding one per handler.
	acks    chan string
	ackDone chan struct{}

	keepStop, keepDone chan struct{}
}

// promoteBatch bounds the delayed messages one promote call moves, so one
// script call stays short; the loop calls again at once when it was full.
const promoteBatch = 100

// maxErrorDelay bounds the wait between tries while the store fails.
const maxErrorDelay = 500 * time.Millisecond

// loopState is what the consumer loop carries from one round to the next.
type loopState struct {
	nextPromote, nextReclaim time.Time
	cursor                   string // of the store's scan for lapsed leases
	needGroup                bool
	errDelay                 time.Duration
}

// loop takes messages and starts their handlers until ctx ends. Each round
// it waits for free handlers, moves due retries into line, takes over
// messages whose lease lapsed and, if there were none, reads new ones.
func (r *bufferRun) loop(ctx context.Context) {
	b, c := r.b, &r.b.cfg
	st := loopState{needGroup: true}
	for ctx.Err() == nil {
		if !c.ready() {
			b.paused.Store(true)
			bufferSleep(ctx, c.poll)
			continue
		}
		b.paused.Store(false)
		if st.needGroup {
			if err := b.store.ensureGroup(r.base); err != nil {
				r.storeFailed(ctx, &st, err)
				continue
			}
			st.needGroup = false
		}
		free := r.acquire(ctx)
		if free == 0 {
			break
		}
		// Waiting for a free handler may have taken a while.
		if !c.ready() {
			r.release(free)
			continue
		}
		ds, err := r.take(ctx, &st, free)
		if err != nil {
			r.release(free)
			if ctx.Err() != nil {
				break
			}
			r.storeFailed(ctx, &st, err)
			continue
		}
		st.errDelay = 0
		if ctx.Err() != nil {
			// Taken but not started: drain hands them back.
			r.release(free)
			break
		}
		r.release(free - len(ds))
		for _, d := range ds {
			r.start(d)
		}
	}
}

// take returns up to free deliveries to start.
func (r *bufferRun) take(ctx context.Context, st *loopState, free int) ([]delivery, error) {
	b, s, c := r.b, r.b.store, &r.b.cfg
	now := time.Now()
	if h := r.dueHint.Swap(0); h != 0 {
		if t := time.Unix(0, h); t.Before(st.nextPromote) {
			st.nextPromote = t
		}
	}
	if !now.Before(st.nextPromote) {
		moved, next, err := s.promote(r.base, promoteBatch)
		switch {
		case err != nil:
			return nil, err
		case moved == promoteBatch:
			st.nextPromote = now
		case next >= 0 && next < c.poll:
			st.nextPromote = now.Add(next)
		default:
			// Other consumers promote what they schedule; this look
			// covers those that stopped.
			st.nextPromote = now.Add(c.poll)
		}
	}
	if !now.Before(st.nextReclaim) {
		ds, dead, cursor, err := s.reclaim(r.base, c.consumer, st.cursor, c.visibility, free, c.maxAttempts)
		if err != nil {
			return nil, err
		}
		st.cursor = cursor
		st.nextReclaim = now.Add(c.visibility / 2)
		if cursor != "" && cursor != "0-0" {
			// Redis scans ten deliveries per one it may claim: go on at
			// once until the scan has covered them all.
			st.nextReclaim = now
		}
		b.tel.add(r.base, b.tel.deadLettered, dead)
		ds = r.dropRunning(ds)
		b.tel.add(r.base, b.tel.reclaimed, len(ds))
		if len(ds) > 0 {
			return ds, nil
		}
	}
	block := min(c.poll, time.Until(st.nextPromote), time.Until(st.nextReclaim))
	return s.fetch(ctx, c.consumer, free, max(block, time.Millisecond))
}

// storeFailed counts a failed store call and waits before the next try,
// longer each time while the store keeps failing.
func (r *bufferRun) storeFailed(ctx context.Context, st *loopState, err error) {
	r.b.tel.add(r.base, r.b.tel.storeErrors, 1)
	if isNoGroup(err) {
		st.needGroup = true
	}
	st.errDelay = min(max(2*st.errDelay, 50*time.Millisecond), maxErrorDelay)
	bufferSleep(ctx, st.errDelay)
}

// ready asks the gate, if any.
func (c *bufferConfig) ready() bool { return c.gate == nil || c.gate.Ready() }

// acquire waits for a free handler and takes every other free one too; it
// returns how many it took, 0 when ctx ended first.
func (r *bufferRun) acquire(ctx context.Context) int {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	n := 1
	for n < cap(r.sem) {
		select {
		case r.sem <- struct{}{}:
			n++
		default:
			return n
		}
	}
	return n
}

func (r *bufferRun) release(n int) {
	for range n {
		<-r.sem
	}
}

// dropRunning removes deliveries whose handler already runs here: a lease
// renewal that failed (Redis was briefly away) let this consumer's own
// reclaim take them again, which renewed them, and that is all.
func (r *bufferRun) dropRunning(ds []delivery) []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := ds[:0]
	for _, d := range ds {
		if _, ok := r.inflight[d.entry]; !ok {
			out = append(out, d)
		}
	}
	return out
}

func (r *bufferRun) start(d delivery) {
	r.mu.Lock()
	r.inflight[d.entry] = struct{}{}
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		if r.handle(d) {
			r.acks <- d.entry // acknowledge takes over from here
			return
		}
		r.done(d.entry)
	}()
}

// done ends the handling of entry: its lease is renewed until its outcome
// is stored, and only then is its handler free.
func (r *bufferRun) done(entries ...string) {
	r.mu.Lock()
	for _, e := range entries {
		delete(r.inflight, e)
	}
	r.mu.Unlock()
	r.release(len(entries))
}

// maxAckBatch bounds the entries one acknowledgement carries.
const maxAckBatch = 256

// acknowledge acknowledges the entries of successful handlers, all those
// waiting in one store call: under load a call carries many, so the store
// sees far fewer calls than messages.
func (r *bufferRun) acknowledge() {
	defer close(r.ackDone)
	b := r.b
	batch := make([]string, 0, min(cap(r.acks), maxAckBatch))
	for e := range r.acks {
		batch = append(batch[:0], e)
	more:
		for len(batch) < maxAckBatch {
			select {
			case e, ok := <-r.acks:
				if !ok {
					break more
				}
				batch = append(batch, e)
			default:
				break more
			}
		}
		if err := b.store.ack(r.base, batch); err != nil {
			// Still pending: they will be delivered again.
			b.tel.add(r.base, b.tel.storeErrors, 1)
		} else {
			b.tel.add(r.base, b.tel.processed, len(batch))
		}
		r.done(batch...)
	}
}

// handle runs the handler on one delivery and stores the outcome, but for
// a success, which it reports for acknowledge to store.
func (r *bufferRun) handle(d delivery) (succeeded bool) {
	b, s, c := r.b, r.b.store, &r.b.cfg
	ctx := r.base
	if c.handlerTO > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.handlerTO)
		defer cancel()
	}
	herr := callHandler(ctx, r.h, d.msg)
	if herr == nil {
		return true
	}
	req := requeueRequest{entry: d.entry, attempt: d.msg.Attempt}
	counter := b.tel.deferred
	switch {
	case c.deferIf != nil && c.deferIf(herr):
		req.delay = c.poll
	case d.msg.Attempt >= c.maxAttempts:
		req.dead, req.errText, req.setErr = true, errorText(herr), true
		counter = b.tel.deadLettered
	default:
		req.attempt++
		req.errText, req.setErr = errorText(herr), true
		req.delay = c.backoff(d.msg.Attempt)
		counter = b.tel.retried
	}
	moved, err := s.requeue(r.base, c.consumer, req)
	if err != nil {
		b.tel.add(r.base, b.tel.storeErrors, 1)
		return false
	}
	if !moved {
		return false // another consumer took it over after this one's lease lapsed
	}
	b.tel.add(r.base, counter, 1)
	if !req.dead {
		r.hintDue(time.Now().Add(req.delay))
	}
	return false
}

// errHandlerPanic marks the error recorded for a handler that panicked.
type errHandlerPanic struct{ v any }

func (e errHandlerPanic) Error() string { return fmt.Sprintf("queue: handler panicked: %v", e.v) }

// callHandler turns a panic into a failed attempt: one bad message must not
// take down every consumer that receives it.
func callHandler(ctx context.Context, h Handler, m Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = errHandlerPanic{p}
		}
	}()
	return h(ctx, m)
}

// hintDue tells the loop a retry is due at t, so it promotes it in time.
func (r *bufferRun) hintDue(t time.Time) {
	ns := t.UnixNano()
	for {
		old := r.dueHint.Load()
		if old != 0 && old <= ns {
			return
		}
		if r.dueHint.CompareAndSwap(old, ns) {
			return
		}
	}
}

// keepLeases renews the leases of running handlers every third of the
// visibility timeout, so a long handler keeps its message.
func (r *bufferRun) keepLeases() {
	defer close(r.keepDone)
	t := time.NewTicker(r.b.cfg.visibility / 3)
	defer t.Stop()
	var ids []string
	for {
		select {
		case <-r.keepStop:
			return
		case <-t.C:
		}
		ids = ids[:0]
		r.mu.Lock()
		for id := range r.inflight {
			ids = append(ids, id)
		}
		r.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		if err := r.b.store.extend(r.base, r.b.cfg.consumer, ids); err != nil {
			r.b.tel.add(r.base, r.b.tel.storeErrors, 1)
		}
	}
}

// drain waits for running handlers and their acknowledgements, stops lease
// renewal and hands back whatever the consumer still holds.
func (r *bufferRun) drain() {
	r.wg.Wait()
	close(r.acks)
	<-r.ackDone
	close(r.keepStop)
	<-r.keepDone
	ctx, cancel := context.WithTimeout(r.base, r.b.cfg.visibility)
	defer cancel()
	if _, err := r.b.store.handBack(ctx, r.b.cfg.consumer); err != nil {
		r.b.tel.add(r.base, r.b.tel.storeErrors, 1)
	}
}

// bufferSleep waits d or until ctx ends.
func bufferSleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
