package queue

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// internalStores makes a fresh store of each kind sharing nothing with
// other tests.
func internalStores(t *testing.T) map[string]Store {
	t.Helper()
	mem, err := NewMemoryStore("orders")
	if err != nil {
		t.Fatal(err)
	}
	rs, err := NewRedisStore(redistest.Client(t), "orders", WithKeyPrefix(redistest.Prefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Store{"memory": mem, "redis": rs}
}

var errCrashed = errors.New("consumer crashed")

// crashStore is a consumer's view of a store that it can lose at once, as
// a process that is killed loses everything: after crash, no call of this
// consumer reaches the store, so it renews no lease, acknowledges nothing
// and hands nothing back.
type crashStore struct {
	Store
	crashed atomic.Bool
}

func (c *crashStore) fail() error {
	if c.crashed.Load() {
		return errCrashed
	}
	return nil
}

func (c *crashStore) fetch(ctx context.Context, consumer string, n int, block time.Duration) ([]delivery, error) {
	if err := c.fail(); err != nil {
		return nil, err
	}
	return c.Store.fetch(ctx, consumer, n, block)
}

func (c *crashStore) reclaim(ctx context.Context, consumer, cursor string, minIdle time.Duration, n, maxAttempts int) ([]delivery, int, string, error) {
	if err := c.fail(); err != nil {
		return nil, 0, cursor, err
	}
	return c.Store.reclaim(ctx, consumer, cursor, minIdle, n, maxAttempts)
}

func (c *crashStore) extend(ctx context.Context, consumer string, entries []string) error {
	if err := c.fail(); err != nil {
		return err
	}
	return c.Store.extend(ctx, consumer, entries)
}

func (c *crashStore) ack(ctx context.Context, entries []string) error {
	if err := c.fail(); err != nil {
		return err
	}
	return c.Store.ack(ctx, entries)
}

func (c *crashStore) requeue(ctx context.Context, consumer string, r requeueRequest) (bool, error) {
	if err := c.fail(); err != nil {
		return false, err
	}
	return c.Store.requeue(ctx, consumer, r)
}

func (c *crashStore) handBack(ctx context.Context, consumer string) (int, error) {
	if err := c.fail(); err != nil {
		return 0, err
	}
	return c.Store.handBack(ctx, consumer)
}

func (c *crashStore) promote(ctx context.Context, n int) (int, time.Duration, error) {
	if err := c.fail(); err != nil {
		return 0, 0, err
	}
	return c.Store.promote(ctx, n)
}

// startRun runs b until the test ends, then waits for Run to return.
func startRun(t *testing.T, b *Buffer, h Handler) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, h)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = b.Close()
	})
}

func testBuffer(t *testing.T, s Store, opts ...BufferOption) *Buffer {
	t.Helper()
	b, err := NewBuffer(s, append([]BufferOption{
		WithBufferPollInterval(20 * time.Millisecond),
		WithVisibilityTimeout(200 * time.Millisecond),
		WithBackoff(5*time.Millisecond, 20*time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// N messages, a consumer that dies with a batch in hand, and another that
// takes the batch over once the leases lapse: nothing lost, nothing done
// twice by the survivor, and the lost deliveries count as attempts.
func TestCrashedConsumerBatchIsReclaimed(t *testing.T) {
	t.Parallel()
	for name, s := range internalStores(t) {
		t.Run(name, func(t *testing.T) {
			doomedStore := &crashStore{Store: s}
			doomed := testBuffer(t, doomedStore, WithConcurrency(5))
			survivor := testBuffer(t, s, WithConcurrency(5))
			ids := make([]string, 20)
			for i := range ids {
				e, err := survivor.Enqueue(context.Background(), "", []byte{byte(i)})
				if err != nil {
					t.Fatal(err)
				}
				ids[i] = e.ID
			}

			held := make(chan string, 5)
			release := make(chan struct{})
			startRun(t, doomed, func(ctx context.Context, m Message) error {
				held <- m.ID
				<-release
				return nil // too late: the crashed consumer cannot ack
			})
			// Cleanups run last first: release the handlers before
			// waiting for their Run.
			t.Cleanup(func() { close(release) })
			var heldIDs []string
			for range 5 {
				heldIDs = append(heldIDs, <-held)
			}
			doomedStore.crashed.Store(true)

			var mu sync.Mutex
			done := map[string][]int{}
			startRun(t, survivor, func(ctx context.Context, m Message) error {
				mu.Lock()
				done[m.ID] = append(done[m.ID], m.Attempt)
				mu.Unlock()
				return nil
			})
			eventually(t, "all 20 handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(done) == 20
			})
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				want := []int{1}
				if slices.Contains(heldIDs, id) {
					want = []int{2}
				}
				if !slices.Equal(done[id], want) {
					t.Errorf("message %s: attempts %v, want %v", id, done[id], want)
				}
			}
		})
	}
}

// A message whose consumers keep dying (a poison message that crashes the
// process) becomes a dead letter when the lost deliveries use up its
// attempts, without being handed to a handler again.
func TestRepeatedCrashesDeadLetter(t *testing.T) {
	t.Parallel()
	for name, s := range internalStores(t) {
		t.Run(name, func(t *testing.T) {
			b := testBuffer(t, s, WithMaxAttempts(2))
			e, err := b.Enqueue(context.Background(), "poison", []byte("x"))
			if err != nil {
				t.Fatal(err)
			}
			release := make(chan struct{})
			defer close(release) // before the cleanups wait for the Runs
			for i := range 2 {
				cs := &crashStore{Store: s}
				got := make(chan Message, 1)
				startRun(t, testBuffer(t, cs, WithMaxAttempts(2)), func(ctx context.Context, m Message) error {
					got <- m
					<-release
					return nil
				})
				m := <-got
				if m.ID != e.ID || m.Attempt != i+1 {
					t.Fatalf("consumer %d got %+v, want attempt %d", i, m, i+1)
				}
				cs.crashed.Store(true)
			}
			var calls atomic.Int32
			startRun(t, b, func(ctx context.Context, m Message) error {
				calls.Add(1)
				return nil
			})
			eventually(t, "a dead letter", func() bool {
				st, err := b.Stats(context.Background())
				return err == nil && st.Dead == 1 && st.Depth == 0
			})
			if n := calls.Load(); n != 0 {
				t.Fatalf("handler called %d times for a message out of attempts", n)
			}
			dead, err := b.DeadLetters(context.Background(), 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(dead) != 1 || dead[0].ID != e.ID || dead[0].Attempt != 2 || dead[0].Key != "poison" ||
				dead[0].LastError == "" {
				t.Fatalf("dead letters %+v", dead)
			}
		})
	}
}

// What a consumer took and never started goes back to the line with its
// attempt as it was, and one reclaimed from a dead consumer keeps the
// attempt the loss cost it.
func TestStoreHandBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, s := range internalStores(t) {
		t.Run(name, func(t *testing.T) {
			if err := s.ensureGroup(ctx); err != nil {
				t.Fatal(err)
			}
			var ids []string
			for i := range 3 {
				r, err := s.enqueue(ctx, "", []byte{byte(i)}, 0)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, r.id)
			}
			ds, err := s.fetch(ctx, "x", 2, time.Millisecond)
			if err != nil || len(ds) != 2 {
				t.Fatalf("fetch: %v, %v", ds, err)
			}
			// "y" takes over x's first after its lease lapses.
			time.Sleep(30 * time.Millisecond)
			rd, _, _, err := s.reclaim(ctx, "y", "", 20*time.Millisecond, 1, 5)
			if err != nil || len(rd) != 1 || rd[0].msg.Attempt != 2 || rd[0].msg.ID != ids[0] {
				t.Fatalf("reclaim: %+v, %v", rd, err)
			}
			if n, err := s.handBack(ctx, "x"); err != nil || n != 1 {
				t.Fatalf("hand back x: %d, %v", n, err)
			}
			if n, err := s.handBack(ctx, "y"); err != nil || n != 1 {
				t.Fatalf("hand back y: %d, %v", n, err)
			}
			st, err := s.stats(ctx)
			if err != nil || st.Depth != 3 || st.Pending != 0 {
				t.Fatalf("stats %+v, %v; want 3 waiting, none pending", st, err)
			}
			all, err := s.fetch(ctx, "z", 10, time.Millisecond)
			if err != nil || len(all) != 3 {
				t.Fatalf("fetch: %v, %v", all, err)
			}
			attempts := map[string]int{}
			for _, d := range all {
				attempts[d.msg.ID] = d.msg.Attempt
			}
			want := map[string]int{ids[0]: 2, ids[1]: 1, ids[2]: 1}
			for id, a := range want {
				if attempts[id] != a {
					t.Errorf("message %s at attempt %d, want %d", id, attempts[id], a)
				}
			}
		})
	}
}

// A lease renewal only renews what the consumer still holds: a message
// another consumer took over stays with it.
func TestStoreExtendDoesNotStealBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, s := range internalStores(t) {
		t.Run(name, func(t *testing.T) {
			if err := s.ensureGroup(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := s.enqueue(ctx, "", []byte("x"), 0); err != nil {
				t.Fatal(err)
			}
			ds, err := s.fetch(ctx, "x", 1, time.Millisecond)
			if err != nil || len(ds) != 1 {
				t.Fatalf("fetch: %v, %v", ds, err)
			}
			time.Sleep(30 * time.Millisecond)
			if rd, _, _, err := s.reclaim(ctx, "y", "", 20*time.Millisecond, 1, 5); err != nil || len(rd) != 1 {
				t.Fatalf("reclaim: %v, %v", rd, err)
			}
			if err := s.extend(ctx, "x", []string{ds[0].entry}); err != nil {
				t.Fatal(err)
			}
			// x's failure report is discarded: y owns the message now.
			moved, err := s.requeue(ctx, "x", requeueRequest{entry: ds[0].entry, attempt: 2, delay: time.Millisecond})
			if err != nil || moved {
				t.Fatalf("requeue by the former owner: %v, %v; want refused", moved, err)
			}
			if n, err := s.handBack(ctx, "y"); err != nil || n != 1 {
				t.Fatalf("y does not hold it: %d, %v", n, err)
			}
		})
	}
}

func TestBackoffBounds(t *testing.T) {
	c := defaultBufferConfig()
	c.backoffBase, c.backoffMax = 100*time.Millisecond, time.Second
	for n, step := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond,
		4: 800 * time.Millisecond, 5: time.Second, 60: time.Second, 200: time.Second} {
		for range 100 {
			if d := c.backoff(n); d < step/2 || d > step {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", n, d, step/2, step)
			}
		}
	}
}

// Messages of a dead consumer are found behind many held by live ones:
// Redis scans ten deliveries per one it may claim, so a consumer with one
// free handler must keep scanning, and must not take the live ones.
func TestReclaimFindsDeadBehindLive(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for name, s := range internalStores(t) {
		t.Run(name, func(t *testing.T) {
			if err := s.ensureGroup(ctx); err != nil {
				t.Fatal(err)
			}
			for i := range 205 {
				if _, err := s.enqueue(ctx, "", []byte{byte(i)}, 0); err != nil {
					t.Fatal(err)
				}
			}
			live, err := s.fetch(ctx, "live", 200, time.Millisecond)
			if err != nil || len(live) != 200 {
				t.Fatalf("fetch: %d, %v", len(live), err)
			}
			dead, err := s.fetch(ctx, "dead", 5, time.Millisecond)
			if err != nil || len(dead) != 5 {
				t.Fatalf("fetch: %d, %v", len(dead), err)
			}
			liveIDs := make([]string, len(live))
			for i, d := range live {
				liveIDs[i] = d.entry
			}
			stopKeeping := make(chan struct{})
			kept := make(chan struct{})
			go func() {
				defer close(kept)
				tick := time.NewTicker(40 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopKeeping:
						return
					case <-tick.C:
						_ = s.extend(ctx, "live", liveIDs)
					}
				}
			}()
			defer func() { close(stopKeeping); <-kept }()

			var mu sync.Mutex
			var got []Message
			startRun(t, testBuffer(t, s, WithConcurrency(1)), func(ctx context.Context, m Message) error {
				mu.Lock()
				got = append(got, m)
				mu.Unlock()
				return nil
			})
			eventually(t, "the dead consumer's five", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(got) >= 5
			})
			mu.Lock()
			defer mu.Unlock()
			for _, m := range got {
				if slices.ContainsFunc(live, func(d delivery) bool { return d.msg.ID == m.ID }) {
					t.Errorf("message %s taken from a live consumer", m.ID)
				}
				if m.Attempt != 2 {
					t.Errorf("message %s at attempt %d, want 2", m.ID, m.Attempt)
				}
			}
		})
	}
}

// One script call with a key twice adds the first and reports the second
// as its duplicate; the depth bound counts the messages added before it in
// the same call.
func TestRedisEnqueueBatch(t *testing.T) {
	t.Parallel()
	s, err := NewRedisStore(redistest.Client(t), "orders", WithKeyPrefix(redistest.Prefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	rs := s.(*redisStore)
	batch := []*enqueueCall{
		{key: "k1", body: []byte("a")},
		{key: "k1", body: []byte("b")},
		{key: "", body: []byte("c"), maxDepth: 2},
		{key: "k2", body: []byte("d"), maxDepth: 2},
		{key: "k2", body: []byte("e"), maxDepth: 2},
	}
	rs.enqueueBatch(context.Background(), batch)
	for i, c := range batch {
		if c.err != nil {
			t.Fatalf("call %d: %v", i, c.err)
		}
	}
	r := func(i int) enqueueResult { return batch[i].res }
	switch {
	case r(0).duplicate || r(0).full || r(0).id == "":
		t.Fatalf("first k1: %+v", r(0))
	case !r(1).duplicate || r(1).id != r(0).id:
		t.Fatalf("second k1: %+v, want a duplicate of %s", r(1), r(0).id)
	case r(2).duplicate || r(2).full:
		t.Fatalf("keyless: %+v", r(2))
	case !r(3).full || r(3).depth != 2:
		t.Fatalf("k2 at depth 2: %+v, want full", r(3))
	case !r(4).full:
		t.Fatalf("k2 again: %+v, want full: the first was not added", r(4))
	}
}
