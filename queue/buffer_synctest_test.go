package queue_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

// runInBubble runs b until stop is called; both belong to the bubble.
func runInBubble(b *queue.Buffer, h queue.Handler) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- b.Run(ctx, h) }()
	return func() error {
		cancel()
		return <-errc
	}
}

// With fake time the backoff can be checked exactly: after attempt n fails
// the retry waits between half and all of base·2^(n-1), plus at most one
// poll interval for the consumer to look.
func TestMemoryBufferBackoffSynctest(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s, err := queue.NewMemoryStore("orders")
		if err != nil {
			t.Fatal(err)
		}
		const poll = 10 * time.Millisecond
		b, err := queue.NewBuffer(s,
			queue.WithBackoff(time.Second, 3*time.Second),
			queue.WithBufferPollInterval(poll),
			queue.WithMaxAttempts(4))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		var mu sync.Mutex
		var at []time.Time
		stop := runInBubble(b, func(ctx context.Context, m queue.Message) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			return errors.New("payment provider down")
		})
		if _, err := b.Enqueue(context.Background(), "", []byte("order")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Minute)
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		if len(at) != 4 {
			t.Fatalf("%d attempts, want 4", len(at))
		}
		for i, step := range []time.Duration{time.Second, 2 * time.Second, 3 * time.Second} {
			gap := at[i+1].Sub(at[i])
			if gap < step/2 || gap > step+poll {
				t.Errorf("gap after attempt %d: %v, want within [%v, %v]", i+1, gap, step/2, step+poll)
			}
		}
		st, err := b.Stats(context.Background())
		if err != nil || st.Dead != 1 || st.Depth != 0 {
			t.Fatalf("stats %+v, %v; want one dead letter", st, err)
		}
	})
}

// A gate shut for an hour holds every message for the hour; the oldest age
// says how long.
func TestMemoryBufferGateSynctest(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s, err := queue.NewMemoryStore("orders")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		open := false
		gate := queue.GateFunc(func() bool {
			mu.Lock()
			defer mu.Unlock()
			return open
		})
		b, err := queue.NewBuffer(s, queue.WithGate(gate), queue.WithBufferPollInterval(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		handled := 0
		stop := runInBubble(b, func(ctx context.Context, m queue.Message) error {
			mu.Lock()
			handled++
			mu.Unlock()
			return nil
		})
		for range 10 {
			if _, err := b.Enqueue(context.Background(), "", nil); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Hour)
		mu.Lock()
		if handled != 0 {
			t.Fatalf("%d handled while the gate was shut", handled)
		}
		open = true
		mu.Unlock()
		st, err := b.Stats(context.Background())
		if err != nil || st.Depth != 10 || st.OldestAge != time.Hour {
			t.Fatalf("stats %+v, %v; want 10 waiting for an hour", st, err)
		}
		time.Sleep(time.Second + time.Millisecond)
		synctest.Wait()
		mu.Lock()
		if handled != 10 {
			t.Errorf("%d handled a poll interval after the gate opened, want 10", handled)
		}
		mu.Unlock()
		if err := stop(); !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	})
}
