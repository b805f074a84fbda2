package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// backend makes a fresh store for a test.
type backend struct {
	name     string
	newStore func(t *testing.T, opts ...queue.StoreOption) queue.Store
}

func backends() []backend {
	return []backend{
		{"memory", func(t *testing.T, opts ...queue.StoreOption) queue.Store {
			mo := make([]queue.MemoryStoreOption, len(opts))
			for i, o := range opts {
				mo[i] = o
			}
			s, err := queue.NewMemoryStore("orders", mo...)
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"redis", func(t *testing.T, opts ...queue.StoreOption) queue.Store {
			return newRedisStore(t, redistest.Client(t), opts...)
		}},
	}
}

func newRedisStore(t *testing.T, c redis.UniversalClient, opts ...queue.StoreOption) queue.Store {
	t.Helper()
	ro := []queue.RedisStoreOption{queue.WithKeyPrefix(redistest.Prefix(t))}
	for _, o := range opts {
		ro = append(ro, o)
	}
	s, err := queue.NewRedisStore(c, "orders", ro...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// forEachBackend runs f once per backend, as subtests.
func forEachBackend(t *testing.T, f func(t *testing.T, be backend)) {
	for _, be := range backends() {
		t.Run(be.name, func(t *testing.T) { f(t, be) })
	}
}

// fast are options that keep the suite quick: short polls, leases and
// backoffs.
func fast(opts ...queue.BufferOption) []queue.BufferOption {
	return append([]queue.BufferOption{
		queue.WithBufferPollInterval(20 * time.Millisecond),
		queue.WithVisibilityTimeout(300 * time.Millisecond),
		queue.WithBackoff(5*time.Millisecond, 20*time.Millisecond),
	}, opts...)
}

func newBuffer(t *testing.T, s queue.Store, opts ...queue.BufferOption) *queue.Buffer {
	t.Helper()
	b, err := queue.NewBuffer(s, fast(opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// runBuffer starts b.Run and returns a function that cancels it and
// returns Run's error. The test's cleanup stops it too.
func runBuffer(t *testing.T, b *queue.Buffer, h queue.Handler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx, h) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-errc
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// waitFor polls cond until it holds, failing t after a generous bound: a
// liveness check, not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// recorder is a handler that records every delivery and succeeds unless
// fail says otherwise.
type recorder struct {
	mu   sync.Mutex
	seen []queue.Message
	done map[string]int // successful handlings by message ID
	fail func(m queue.Message) error
}

func newRecorder(fail func(queue.Message) error) *recorder {
	return &recorder{done: make(map[string]int), fail: fail}
}

func (r *recorder) handle(_ context.Context, m queue.Message) error {
	var err error
	if r.fail != nil {
		err = r.fail(m)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, m)
	if err == nil {
		r.done[m.ID]++
	}
	return err
}

func (r *recorder) doneCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.done)
}

func (r *recorder) deliveries() []queue.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen)
}

func enqueueN(t *testing.T, b *queue.Buffer, n int, keyPrefix string) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		key := ""
		if keyPrefix != "" {
			key = keyPrefix + strconv.Itoa(i)
		}
		e, err := b.Enqueue(context.Background(), key, []byte("order-"+strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		if e.Duplicate {
			t.Fatalf("message %d reported as a duplicate", i)
		}
		ids[i] = e.ID
	}
	return ids
}

func stats(t *testing.T, b *queue.Buffer) queue.BufferStats {
	t.Helper()
	st, err := b.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestBufferDeliversEveryMessageOnce(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t), queue.WithConcurrency(4))
		before := time.Now().Add(-time.Second)
		ids := enqueueN(t, b, 50, "order-")
		rec := newRecorder(nil)
		stop := runBuffer(t, b, rec.handle)
		waitFor(t, "every message handled", func() bool { return rec.doneCount() == 50 })
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
		for _, id := range ids {
			if rec.done[id] != 1 {
				t.Errorf("message %s handled %d times, want once", id, rec.done[id])
			}
		}
		for _, m := range rec.deliveries() {
			i, _ := strconv.Atoi(strings.TrimPrefix(m.Key, "order-"))
			if m.ID != ids[i] || string(m.Body) != "order-"+strconv.Itoa(i) || m.Attempt != 1 || m.LastError != "" {
				t.Errorf("delivered %+v, want ID %s, body order-%d, attempt 1", m, ids[i], i)
			}
			if m.EnqueuedAt.Before(before) || m.EnqueuedAt.After(time.Now().Add(time.Second)) {
				t.Errorf("EnqueuedAt %v is not around now", m.EnqueuedAt)
			}
		}
		if st := stats(t, b); st != (queue.BufferStats{}) {
			t.Errorf("after processing everything: %+v, want all zero", st)
		}
	})
}

func TestBufferIdempotentEnqueue(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t, queue.WithIdempotencyTTL(300*time.Millisecond)))
		ctx := context.Background()
		first, err := b.Enqueue(ctx, "order-42", []byte("pay 10"))
		if err != nil || first.Duplicate || first.ID == "" {
			t.Fatalf("first enqueue: %+v, %v", first, err)
		}
		again, err := b.Enqueue(ctx, "order-42", []byte("pay 10, again"))
		if err != nil || !again.Duplicate || again.ID != first.ID {
			t.Fatalf("repeated enqueue: %+v, %v; want duplicate of %s", again, err, first.ID)
		}
		// No key, no idempotency.
		a, _ := b.Enqueue(ctx, "", []byte("x"))
		c, _ := b.Enqueue(ctx, "", []byte("x"))
		if a.Duplicate || c.Duplicate || a.ID == c.ID {
			t.Fatalf("keyless enqueues %+v and %+v, want two messages", a, c)
		}
		if st := stats(t, b); st.Depth != 3 {
			t.Fatalf("depth %d, want 3", st.Depth)
		}

		rec := newRecorder(nil)
		stop := runBuffer(t, b, rec.handle)
		waitFor(t, "three messages handled", func() bool { return rec.doneCount() == 3 })
		_ = stop()
		for _, m := range rec.deliveries() {
			if m.ID == first.ID && string(m.Body) != "pay 10" {
				t.Errorf("body %q, want the first enqueue's", m.Body)
			}
		}
		// Still a duplicate after it was processed, until the record expires.
		if again, _ := b.Enqueue(ctx, "order-42", nil); !again.Duplicate {
			t.Fatalf("enqueue after processing: %+v, want duplicate", again)
		}
		waitFor(t, "the idempotency record to expire", func() bool {
			e, err := b.Enqueue(ctx, "order-42", []byte("new"))
			return err == nil && !e.Duplicate && e.ID != first.ID
		})
	})
}

func TestBufferRetriesThenDeadLettersAndRedrives(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t), queue.WithMaxAttempts(3))
		ids := enqueueN(t, b, 1, "")
		var fixed atomic.Bool
		rec := newRecorder(func(m queue.Message) error {
			if fixed.Load() {
				return nil
			}
			return fmt.Errorf("payment declined on attempt %d", m.Attempt)
		})
		stop := runBuffer(t, b, rec.handle)
		waitFor(t, "a dead letter", func() bool { return stats(t, b).Dead == 1 })

		got := rec.deliveries()
		if len(got) != 3 {
			t.Fatalf("%d deliveries, want 3: %+v", len(got), got)
		}
		for i, m := range got {
			wantErr := ""
			if i > 0 {
				wantErr = fmt.Sprintf("payment declined on attempt %d", i)
			}
			if m.ID != ids[0] || m.Attempt != i+1 || m.LastError != wantErr {
				t.Errorf("delivery %d: %+v, want attempt %d, LastError %q", i, m, i+1, wantErr)
			}
		}
		dead, err := b.DeadLetters(context.Background(), 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(dead) != 1 || dead[0].ID != ids[0] || dead[0].Attempt != 3 ||
			dead[0].LastError != "payment declined on attempt 3" || string(dead[0].Body) != "order-0" {
			t.Fatalf("dead letters %+v", dead)
		}
		if st := stats(t, b); st.Depth != 0 || st.Delayed != 0 || st.Pending != 0 {
			t.Fatalf("stats %+v, want only the dead letter", st)
		}

		// The cause is fixed: a new round.
		fixed.Store(true)
		if n, err := b.Redrive(context.Background(), 10); err != nil || n != 1 {
			t.Fatalf("Redrive = %d, %v; want 1", n, err)
		}
		waitFor(t, "the redriven message handled", func() bool { return rec.doneCount() == 1 })
		_ = stop()
		last := rec.deliveries()[3]
		if last.ID != ids[0] || last.Attempt != 1 || last.LastError != "payment declined on attempt 3" {
			t.Fatalf("redriven delivery %+v, want attempt 1 with the last error kept", last)
		}
		if st := stats(t, b); st != (queue.BufferStats{}) {
			t.Fatalf("stats %+v, want empty", st)
		}
	})
}

func TestBufferRetryThenSuccess(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t), queue.WithBackoff(40*time.Millisecond, 40*time.Millisecond))
		enqueueN(t, b, 1, "")
		rec := newRecorder(func(m queue.Message) error {
			if m.Attempt < 3 {
				return errors.New("gateway timeout")
			}
			return nil
		})
		runBuffer(t, b, rec.handle)
		waitFor(t, "success on the third attempt", func() bool { return rec.doneCount() == 1 })
		if got := rec.deliveries(); len(got) != 3 || got[2].Attempt != 3 || got[2].LastError != "gateway timeout" {
			t.Fatalf("deliveries %+v, want three, the last at attempt 3", got)
		}
		waitFor(t, "the acknowledgement", func() bool { return stats(t, b) == (queue.BufferStats{}) })
	})
}

func TestBufferHandlerPanicFailsTheAttempt(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t))
		enqueueN(t, b, 1, "")
		rec := newRecorder(func(m queue.Message) error {
			if m.Attempt == 1 {
				panic("nil order")
			}
			return nil
		})
		runBuffer(t, b, rec.handle)
		waitFor(t, "the second attempt", func() bool { return rec.doneCount() == 1 })
		// The panicking delivery never reached the recorder's bookkeeping.
		if m := rec.deliveries()[0]; m.Attempt != 2 || !strings.Contains(m.LastError, "panicked: nil order") {
			t.Fatalf("delivery %+v, want attempt 2 after a panic", m)
		}
	})
}

func TestBufferHandlerTimeout(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t), queue.WithHandlerTimeout(20*time.Millisecond))
		enqueueN(t, b, 1, "")
		var last atomic.Value
		runBuffer(t, b, func(ctx context.Context, m queue.Message) error {
			last.Store(m)
			if m.Attempt == 1 {
				<-ctx.Done()
				return ctx.Err()
			}
			return nil
		})
		waitFor(t, "a second attempt", func() bool {
			m, _ := last.Load().(queue.Message)
			return m.Attempt == 2
		})
		if m := last.Load().(queue.Message); m.LastError != context.DeadlineExceeded.Error() {
			t.Fatalf("LastError %q, want the deadline", m.LastError)
		}
	})
}

func TestBufferLongHandlerKeepsItsLease(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		s := be.newStore(t)
		// Generous, so that a machine busy with other tests cannot
		// delay a renewal past the timeout.
		vis := queue.WithVisibilityTimeout(400 * time.Millisecond)
		a := newBuffer(t, s, vis)
		other := newBuffer(t, s, vis)
		enqueueN(t, a, 1, "")
		var calls atomic.Int32
		var attempts sync.Map
		h := func(ctx context.Context, m queue.Message) error {
			calls.Add(1)
			attempts.Store(m.Attempt, true)
			time.Sleep(1600 * time.Millisecond) // four visibility timeouts
			return nil
		}
		runBuffer(t, a, h)
		waitFor(t, "the handler to start", func() bool { return calls.Load() == 1 })
		// The other consumer reclaims every 200ms and must find nothing.
		runBuffer(t, other, h)
		waitFor(t, "the message acknowledged", func() bool { return stats(t, a).Depth == 0 })
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler called %d times, want once", n)
		}
		if _, ok := attempts.Load(2); ok {
			t.Fatal("the message was redelivered while its handler ran")
		}
	})
}

func TestBufferGatePausesAndResumes(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		var open atomic.Bool
		b := newBuffer(t, be.newStore(t), queue.WithGate(queue.GateFunc(open.Load)))
		rec := newRecorder(nil)
		runBuffer(t, b, rec.handle)
		enqueueN(t, b, 20, "")
		// Several poll intervals with the gate shut: nothing may move.
		time.Sleep(150 * time.Millisecond)
		if n := len(rec.deliveries()); n != 0 {
			t.Fatalf("%d deliveries while the gate was shut", n)
		}
		st := stats(t, b)
		if st.Depth != 20 || st.Pending != 0 {
			t.Fatalf("stats while paused %+v, want 20 waiting, none pending", st)
		}
		if st.OldestAge < 100*time.Millisecond {
			t.Fatalf("OldestAge %v, want at least the time spent waiting", st.OldestAge)
		}
		open.Store(true)
		waitFor(t, "everything after the gate opened", func() bool { return rec.doneCount() == 20 })
		open.Store(false)
		// A read begun just before the gate shut may still deliver: let
		// the consumer come round to the gate first.
		time.Sleep(100 * time.Millisecond)
		enqueueN(t, b, 5, "")
		time.Sleep(100 * time.Millisecond)
		if n := rec.doneCount(); n != 20 {
			t.Fatalf("%d handled after the gate shut again, want 20", n)
		}
		open.Store(true)
		waitFor(t, "the rest", func() bool { return rec.doneCount() == 25 })
	})
}

var errBreakerOpen = errors.New("breaker: open")

func TestBufferDeferIfKeepsAttempts(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t),
			queue.WithMaxAttempts(2),
			queue.WithDeferIf(func(err error) bool { return errors.Is(err, errBreakerOpen) }))
		enqueueN(t, b, 3, "")
		var refusals atomic.Int32
		rec := newRecorder(func(m queue.Message) error {
			// The payment breaker refuses the first ten calls.
			if refusals.Add(1) <= 10 {
				return fmt.Errorf("charge: %w", errBreakerOpen)
			}
			return nil
		})
		runBuffer(t, b, rec.handle)
		waitFor(t, "all three processed", func() bool { return rec.doneCount() == 3 })
		for _, m := range rec.deliveries() {
			if m.Attempt != 1 || m.LastError != "" {
				t.Fatalf("delivery %+v, want every delivery at attempt 1 with no error", m)
			}
		}
		waitFor(t, "the acknowledgement", func() bool { return stats(t, b) == (queue.BufferStats{}) })
	})
}

func TestBufferGracefulShutdown(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		s := be.newStore(t)
		// A long lease: what the second consumer gets, it gets because it
		// was handed back, not because a lease lapsed.
		long := queue.WithVisibilityTimeout(time.Minute)
		b := newBuffer(t, s, long, queue.WithConcurrency(2))
		enqueueN(t, b, 5, "")
		started := make(chan context.Context, 2)
		release := make(chan struct{})
		rec := newRecorder(nil)
		stop := runBuffer(t, b, func(ctx context.Context, m queue.Message) error {
			started <- ctx
			<-release
			return rec.handle(ctx, m)
		})
		ctx1, ctx2 := <-started, <-started
		stopped := make(chan error, 1)
		go func() { stopped <- stop() }()
		select {
		case err := <-stopped:
			t.Fatalf("Run returned %v while handlers were running", err)
		case <-time.After(100 * time.Millisecond):
		}
		if ctx1.Err() != nil || ctx2.Err() != nil {
			t.Fatal("a running handler's context was cancelled by the shutdown")
		}
		close(release)
		if err := <-stopped; !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
		if n := rec.doneCount(); n != 2 {
			t.Fatalf("%d handled, want the 2 in flight", n)
		}
		if st := stats(t, b); st.Depth != 3 || st.Pending != 0 {
			t.Fatalf("after shutdown %+v, want 3 waiting and none held", st)
		}

		next := newBuffer(t, s, long)
		rec2 := newRecorder(nil)
		runBuffer(t, next, rec2.handle)
		waitFor(t, "the rest by the next consumer", func() bool { return rec2.doneCount() == 3 })
		for _, m := range rec2.deliveries() {
			if m.Attempt != 1 {
				t.Fatalf("delivery %+v, want attempt 1: a shutdown is not a failure", m)
			}
		}
	})
}

// A message a consumer took but never started (it stopped at once) goes
// back to the line at shutdown with its attempt unchanged, and a clean
// shutdown leaves no trace of the consumer in the Redis group.
func TestBufferShutdownForgetsConsumer(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	prefix := redistest.Prefix(t)
	s, err := queue.NewRedisStore(c, "orders", queue.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	b := newBuffer(t, s, queue.WithConsumer("worker-1"))
	enqueueN(t, b, 1, "")
	rec := newRecorder(nil)
	stop := runBuffer(t, b, rec.handle)
	waitFor(t, "one handled", func() bool { return rec.doneCount() == 1 })
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	consumers, err := c.XInfoConsumers(context.Background(), prefix+"{orders}:stream", "bulwark").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(consumers) != 0 {
		t.Fatalf("consumers left in the group: %+v", consumers)
	}
	if n := c.XLen(context.Background(), prefix+"{orders}:stream").Val(); n != 0 {
		t.Fatalf("stream holds %d entries after every message was acknowledged", n)
	}
}

// A consumer whose Redis connection dies with handlers running (as when its
// process is killed) loses its messages to another consumer once their
// lease lapses; none is lost, and the lost delivery counts as an attempt.
func TestBufferCrashedConsumerIsReclaimed(t *testing.T) {
	t.Parallel()
	addr := redistest.Addr(t)
	prefix := redistest.Prefix(t)
	crashing := redistest.NewClient(t, addr)
	storeOf := func(c redis.UniversalClient) queue.Store {
		s, err := queue.NewRedisStore(c, "orders", queue.WithKeyPrefix(prefix))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	opts := []queue.BufferOption{queue.WithVisibilityTimeout(300 * time.Millisecond), queue.WithConcurrency(5)}
	doomed := newBuffer(t, storeOf(crashing), opts...)
	survivor := newBuffer(t, storeOf(redistest.Client(t)), opts...)
	ids := enqueueN(t, survivor, 20, "")

	held := make(chan string, 5)
	never := make(chan struct{})
	defer close(never)
	runBuffer(t, doomed, func(ctx context.Context, m queue.Message) error {
		held <- m.ID
		<-never // blocks until the test ends: its result goes nowhere
		return nil
	})
	var heldIDs []string
	for range 5 {
		heldIDs = append(heldIDs, <-held)
	}
	_ = crashing.Close() // the crash: no more lease renewals, acks or hand-back

	rec := newRecorder(nil)
	runBuffer(t, survivor, rec.handle)
	waitFor(t, "all 20 handled by the survivor", func() bool { return rec.doneCount() == 20 })
	for _, id := range ids {
		if rec.done[id] != 1 {
			t.Errorf("message %s handled %d times by the survivor", id, rec.done[id])
		}
	}
	for _, m := range rec.deliveries() {
		wantAttempt := 1
		if slices.Contains(heldIDs, m.ID) {
			wantAttempt = 2
		}
		if m.Attempt != wantAttempt {
			t.Errorf("message %s at attempt %d, want %d", m.ID, m.Attempt, wantAttempt)
		}
	}
	waitFor(t, "nothing left", func() bool { return stats(t, survivor) == (queue.BufferStats{}) })
}

func TestBufferMaxDepth(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t), queue.WithMaxDepth(3))
		ctx := context.Background()
		enqueueN(t, b, 3, "k")
		_, err := b.Enqueue(ctx, "k9", []byte("one too many"))
		if !errors.Is(err, queue.ErrFull) {
			t.Fatalf("fourth enqueue: %v, want ErrFull", err)
		}
		// A duplicate adds nothing, so it is not refused.
		if e, err := b.Enqueue(ctx, "k0", nil); err != nil || !e.Duplicate {
			t.Fatalf("duplicate at max depth: %+v, %v", e, err)
		}
		rec := newRecorder(nil)
		runBuffer(t, b, rec.handle)
		waitFor(t, "room again", func() bool {
			_, err := b.Enqueue(ctx, "k9", []byte("now it fits"))
			return err == nil
		})
	})
}

func TestBufferClose(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t))
		ctx := context.Background()
		enqueueN(t, b, 1, "")
		rec := newRecorder(nil)
		// A Buffer runs again after a Run ended.
		stop := runBuffer(t, b, rec.handle)
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatalf("first Run: %v", err)
		}
		errc := make(chan error, 1)
		go func() { errc <- b.Run(ctx, rec.handle) }()
		waitFor(t, "Run to handle a message", func() bool { return rec.doneCount() == 1 })
		if err := b.Run(ctx, newRecorder(nil).handle); !errors.Is(err, queue.ErrRunning) {
			t.Fatalf("second Run: %v, want ErrRunning", err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Run after Close returned %v, want ErrClosed", err)
		}
		if err := b.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if _, err := b.Enqueue(ctx, "", nil); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Enqueue after Close: %v", err)
		}
		if err := b.Run(ctx, newRecorder(nil).handle); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Run after Close: %v", err)
		}
		if _, err := b.Stats(ctx); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Stats after Close: %v", err)
		}
		if _, err := b.DeadLetters(ctx, 1); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("DeadLetters after Close: %v", err)
		}
		if _, err := b.Redrive(ctx, 1); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Redrive after Close: %v", err)
		}
	})
}

func TestBufferCancelledContext(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		b := newBuffer(t, be.newStore(t))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := b.Enqueue(ctx, "k", nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("Enqueue: %v, want context.Canceled", err)
		}
		if err := b.Run(ctx, newRecorder(nil).handle); !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v, want context.Canceled", err)
		}
		if _, err := b.Stats(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("Stats: %v", err)
		}
		if st := stats(t, b); st.Depth != 0 {
			t.Fatalf("a cancelled Enqueue stored a message: %+v", st)
		}
		// The key was not taken by the cancelled call.
		if e, err := b.Enqueue(context.Background(), "k", nil); err != nil || e.Duplicate {
			t.Fatalf("Enqueue: %+v, %v", e, err)
		}
	})
}

// Redis restarts (a private server without persistence): while it is down
// Enqueue and Stats fail with ErrUnavailable wrapping the cause and Run
// keeps trying; after it is back, the buffer and its consumer carry on.
// What Redis held is gone: durability across a Redis restart needs AOF.
func TestBufferRedisRestart(t *testing.T) {
	t.Parallel()
	srv := redistest.StartServer(t)
	c := redistest.NewClient(t, srv.Addr)
	s := newRedisStore(t, c)
	b := newBuffer(t, s)
	rec := newRecorder(nil)
	stop := runBuffer(t, b, rec.handle)
	enqueueN(t, b, 10, "before-")
	waitFor(t, "the first ten", func() bool { return rec.doneCount() == 10 })

	srv.Kill()
	ctx := context.Background()
	start := time.Now()
	_, err := b.Enqueue(ctx, "during", []byte("x"))
	t.Logf("Enqueue with Redis down failed after %v", time.Since(start))
	var netErr *net.OpError
	if !errors.Is(err, queue.ErrUnavailable) || !errors.As(err, &netErr) {
		t.Fatalf("Enqueue with Redis down: %v, want ErrUnavailable with a cause", err)
	}
	if !strings.Contains(err.Error(), "enqueue") {
		t.Fatalf("error %q does not say what failed", err)
	}
	if _, err := b.Stats(ctx); !errors.Is(err, queue.ErrUnavailable) {
		t.Fatalf("Stats with Redis down: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // the consumer loop meets the outage

	srv.Start(t)
	// After failed dials go-redis answers with the last dial error until
	// its own retry (once a second) connects again.
	waitFor(t, "the client to reconnect", func() bool {
		_, err := b.Stats(ctx)
		return err == nil
	})
	// The group was lost with the data; the consumer recreates it.
	ids := enqueueN(t, b, 20, "after-")
	waitFor(t, "everything enqueued after the restart", func() bool { return rec.doneCount() == 30 })
	for _, id := range ids {
		if rec.done[id] != 1 {
			t.Errorf("message %s handled %d times", id, rec.done[id])
		}
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestNewBufferRejectsBadConfig(t *testing.T) {
	t.Parallel()
	s, err := queue.NewMemoryStore("orders")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		field string
		opt   queue.BufferOption
	}{
		{"opts", nil},
		{"WithConsumer", queue.WithConsumer("")},
		{"WithConcurrency", queue.WithConcurrency(0)},
		{"WithMaxAttempts", queue.WithMaxAttempts(0)},
		{"WithBackoff base", queue.WithBackoff(0, time.Second)},
		{"WithBackoff max", queue.WithBackoff(time.Second, time.Millisecond)},
		{"WithVisibilityTimeout", queue.WithVisibilityTimeout(time.Millisecond)},
		{"WithBufferPollInterval", queue.WithBufferPollInterval(0)},
		{"WithHandlerTimeout", queue.WithHandlerTimeout(-time.Second)},
		{"WithMaxDepth", queue.WithMaxDepth(-1)},
		{"WithConcurrency", queue.WithConcurrency(5000)},
		{"WithGate", queue.WithGate(nil)},
		{"WithDeferIf", queue.WithDeferIf(nil)},
	} {
		b, err := queue.NewBuffer(s, tc.opt)
		if !errors.Is(err, queue.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) || b != nil {
			t.Errorf("%s: got %v, %v; want ErrInvalidConfig naming it", tc.field, b, err)
		}
	}
	if _, err := queue.NewBuffer(nil); !errors.Is(err, queue.ErrInvalidConfig) || !strings.Contains(err.Error(), "store") {
		t.Errorf("nil store: %v", err)
	}
	b, err := queue.NewBuffer(s)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Run(context.Background(), nil); !errors.Is(err, queue.ErrInvalidConfig) || !strings.Contains(err.Error(), "handler") {
		t.Errorf("nil handler: %v", err)
	}
}

func TestNewStoreRejectsBadConfig(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	for _, tc := range []struct {
		field string
		err   func() error
	}{
		{"client", func() error { _, err := queue.NewRedisStore(nil, "orders"); return err }},
		{"name", func() error { _, err := queue.NewRedisStore(c, ""); return err }},
		{"name", func() error { _, err := queue.NewRedisStore(c, "a{b}"); return err }},
		{"WithKeyPrefix", func() error {
			_, err := queue.NewRedisStore(c, "orders", queue.WithKeyPrefix("x{"))
			return err
		}},
		{"WithIdempotencyTTL", func() error {
			_, err := queue.NewRedisStore(c, "orders", queue.WithIdempotencyTTL(0))
			return err
		}},
		{"opts", func() error { _, err := queue.NewRedisStore(c, "orders", nil); return err }},
		{"name", func() error { _, err := queue.NewMemoryStore(""); return err }},
		{"WithIdempotencyTTL", func() error {
			_, err := queue.NewMemoryStore("orders", queue.WithIdempotencyTTL(-time.Hour))
			return err
		}},
	} {
		if err := tc.err(); !errors.Is(err, queue.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming it", tc.field, err)
		}
	}
}

// The store's keys share one hash tag, and an idempotency record lives for
// the TTL.
func TestRedisStoreKeys(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	prefix := redistest.Prefix(t)
	s, err := queue.NewRedisStore(c, "orders", queue.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	b := newBuffer(t, s)
	e, err := b.Enqueue(context.Background(), "order-7", []byte("body"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if id := c.Get(ctx, prefix+"{orders}:idem:order-7").Val(); id != e.ID {
		t.Fatalf("idempotency record holds %q, want %q", id, e.ID)
	}
	if ttl := c.PTTL(ctx, prefix+"{orders}:idem:order-7").Val(); ttl < 23*time.Hour || ttl > 24*time.Hour {
		t.Fatalf("idempotency TTL %v, want the 24h default", ttl)
	}
	xs := c.XRange(ctx, prefix+"{orders}:stream", "-", "+").Val()
	if len(xs) != 1 || xs[0].ID != e.ID || xs[0].Values["body"] != "body" || xs[0].Values["key"] != "order-7" {
		t.Fatalf("stream holds %+v", xs)
	}
}

func TestGateFunc(t *testing.T) {
	t.Parallel()
	var g queue.Gate = queue.GateFunc(func() bool { return true })
	if !g.Ready() {
		t.Fatal("GateFunc did not return its function's answer")
	}
}

// Concurrent Enqueues share script calls on Redis; idempotency and the
// depth bound hold across them, also for a key repeated within one call.
func TestBufferConcurrentEnqueue(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		ctx := context.Background()
		keyed := newBuffer(t, be.newStore(t))
		var mu sync.Mutex
		ids := map[string]map[string]bool{} // key -> IDs returned
		added := 0
		var wg sync.WaitGroup
		for g := range 64 {
			wg.Go(func() {
				for i := range 5 {
					// 20 keys, each enqueued by many goroutines at once.
					key := "order-" + strconv.Itoa((g+i)%20)
					e, err := keyed.Enqueue(ctx, key, []byte(key))
					mu.Lock()
					if err != nil {
						t.Errorf("enqueue %s: %v", key, err)
					} else {
						if ids[key] == nil {
							ids[key] = map[string]bool{}
						}
						ids[key][e.ID] = true
						if !e.Duplicate {
							added++
						}
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if len(ids) != 20 || added != 20 {
			t.Fatalf("%d keys seen, %d messages added; want 20 and 20", len(ids), added)
		}
		for key, set := range ids {
			if len(set) != 1 {
				t.Fatalf("key %s got IDs %v, want one", key, set)
			}
		}
		if st := stats(t, keyed); st.Depth != 20 {
			t.Fatalf("depth %d, want 20", st.Depth)
		}

		bounded := newBuffer(t, be.newStore(t), queue.WithMaxDepth(50))
		var ok, full atomic.Int32
		for range 64 {
			wg.Go(func() {
				for range 5 {
					_, err := bounded.Enqueue(ctx, "", []byte("x"))
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, queue.ErrFull):
						full.Add(1)
					default:
						t.Errorf("enqueue: %v", err)
					}
				}
			})
		}
		wg.Wait()
		if ok.Load() != 50 || full.Load() != 270 {
			t.Fatalf("%d added, %d refused as full; want 50 and 270", ok.Load(), full.Load())
		}
	})
}
