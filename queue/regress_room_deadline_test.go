package queue_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// Regression: when a join's reply was lost to the caller's deadline, the
// room took back the ticket the join may have added before returning, with
// a detached timeout of a second, so on a stalled Redis Join and Wait with
// a 100ms deadline returned only when the stall ended. Now they return the
// context's error at the deadline and the clean-up goes on in the
// background, where Close waits for it; once Redis answers again, the
// ticket the lost join added is gone.
func TestRegressionRedisRoomJoinKeepsDeadline(t *testing.T) {
	srv := redistest.StartServerWith(t, "--enable-debug-command", "local")
	client := redis.NewClient(&redis.Options{Addr: srv.Addr, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = client.Close() })
	r, err := queue.NewRoom("stalled", 1, queue.WithRedis(client), queue.WithKeyPrefix(redistest.Prefix(t)),
		queue.WithRejectTooLong(false))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	bg := context.Background()
	first, err := r.Wait(bg) // the next caller must stand in line
	if err != nil {
		t.Fatal(err)
	}
	defer first.Done()

	// margin is generous for two shared, busy cores under the race
	// detector, and far shorter than the stall.
	const timeout, margin = 100 * time.Millisecond, 500 * time.Millisecond
	calls := map[string]func(context.Context) error{
		"Join": func(ctx context.Context) error {
			tk, err := r.Join(ctx)
			if err == nil { // the stall had not begun: give the place back
				_ = r.Leave(bg, tk.ID)
			}
			return err
		},
		"Wait": func(ctx context.Context) error {
			a, err := r.Wait(ctx)
			a.Done() // a no-op unless the stall had not begun
			return err
		},
	}
	type result struct {
		err        error
		start, end time.Time
	}
	for attempt := 1; ; attempt++ {
		results := map[string]result{}
		// Shorter than the clean-up's own timeout of a second, which
		// starts at the callers' deadlines.
		wait := srv.Stall(t, 600*time.Millisecond)
		for name, call := range calls {
			ctx, cancel := context.WithTimeout(bg, timeout)
			start := time.Now()
			err := call(ctx)
			results[name] = result{err, start, time.Now()}
			cancel()
		}
		began := wait()
		covered := true
		for _, res := range results {
			covered = covered && res.start.After(began) && res.end.Before(began.Add(600*time.Millisecond))
		}
		if !covered {
			// The server had not begun to sleep when the calls began.
			if attempt == 3 {
				t.Fatal("three stalls in a row did not cover the calls")
			}
			continue
		}
		for name, res := range results {
			if !errors.Is(res.err, context.DeadlineExceeded) {
				t.Errorf("%s on a stalled Redis: %v, want context.DeadlineExceeded", name, res.err)
			}
			if took := res.end.Sub(res.start); took > timeout+margin {
				t.Errorf("%s with a %v deadline returned after %v", name, timeout, took)
			}
		}
		break
	}
	// Redis ran the joins after the stall, and the room took back their
	// tickets (one admitted at once, one in line): a stall shorter than the
	// clean-up's own timeout leaves only the first caller's admission.
	redisWaitFor(t, "the lost joins' tickets to be taken back", func() bool {
		s, err := r.Stats(bg)
		return err == nil && s.Length == 0 && s.Active == 1
	})
}
