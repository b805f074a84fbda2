package queue_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

func newRoom(t *testing.T, rate float64, opts ...queue.RoomOption) *queue.Room {
	t.Helper()
	r, err := queue.NewRoom("test", rate, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// seqOf returns the ticket number in an ID.
func seqOf(t *testing.T, id string) int {
	t.Helper()
	n, err := strconv.Atoi(id[:strings.IndexByte(id, '-')])
	if err != nil {
		t.Fatalf("ticket %q: %v", id, err)
	}
	return n
}

func TestRoomAdmitsInJoiningOrderAtTheRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 100)
		const n = 300
		type admission struct {
			who int
			at  time.Time
		}
		var (
			mu  sync.Mutex
			got []admission
			wg  sync.WaitGroup
		)
		start := time.Now()
		for i := range n {
			wg.Go(func() {
				a, err := r.Wait(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				defer a.Done()
				mu.Lock()
				got = append(got, admission{i, time.Now()})
				mu.Unlock()
			})
			// Let goroutine i join before i+1 starts: joining order
			// is then known.
			synctest.Wait()
		}
		wg.Wait()
		if len(got) != n {
			t.Fatalf("%d admissions, want %d", len(got), n)
		}
		for k, a := range got {
			if a.who != k {
				t.Fatalf("admission %d went to caller %d: overtaking", k, a.who)
			}
			// Evenly spaced at exactly the rate: 10ms apart.
			if want := start.Add(time.Duration(k) * 10 * time.Millisecond); !a.at.Equal(want) {
				t.Fatalf("admission %d at %v, want %v", k, a.at.Sub(start), want.Sub(start))
			}
		}
	})
}

func TestRoomFIFOUnderConcurrentJoins(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Callers join from many goroutines at once, in whatever order
		// the scheduler picks; the room numbers tickets in the order
		// they joined. In a synctest bubble every admission happens at
		// its own exact instant, so sorting by admission time must
		// give the tickets in number order: no overtaking.
		r := newRoom(t, 1000)
		const n = 500
		type admission struct {
			seq int
			at  time.Time
		}
		var (
			mu  sync.Mutex
			got []admission
			wg  sync.WaitGroup
		)
		for range n {
			wg.Go(func() {
				a, err := r.Wait(t.Context())
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got = append(got, admission{seqOf(t, a.Ticket), time.Now()})
				mu.Unlock()
				a.Done()
			})
		}
		wg.Wait()
		if len(got) != n {
			t.Fatalf("%d admissions, want %d", len(got), n)
		}
		slices.SortFunc(got, func(a, b admission) int { return a.at.Compare(b.at) })
		for k := 1; k < n; k++ {
			if got[k].seq <= got[k-1].seq || !got[k].at.After(got[k-1].at) {
				t.Fatalf("admission %d: ticket %d at %v after ticket %d at %v",
					k, got[k].seq, got[k].at, got[k-1].seq, got[k-1].at)
			}
		}
	})
}

func TestRoomRateAtTwiceOverload(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const rate = 200.0
		r := newRoom(t, rate, queue.WithMaxWait(500*time.Millisecond), queue.WithMaxLength(10_000))
		var (
			mu                         sync.Mutex
			admitted, tooLong, timeout int
			wg                         sync.WaitGroup
		)
		ctx := t.Context()
		start := time.Now()
		// Arrivals at 2× the rate for 10 s.
		for range int(2 * rate * 10) {
			wg.Go(func() {
				a, err := r.Wait(ctx)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					// Those still in line at 10 s are admitted
					// later; count the 10 s window.
					if time.Since(start) < 10*time.Second {
						admitted++
					}
					a.Done()
				case errors.Is(err, queue.ErrWaitTooLong):
					tooLong++
				case errors.Is(err, queue.ErrWaitTimeout):
					timeout++
				default:
					t.Error(err)
				}
			})
			time.Sleep(time.Second / (2 * rate))
		}
		wg.Wait()
		// Admissions at 0, 5ms, ..., 9.995s: exactly the rate.
		if want := int(rate * 10); admitted != want {
			t.Errorf("admitted %d in 10s, want %d", admitted, want)
		}
		if tooLong == 0 {
			t.Errorf("nobody was refused early at 2× overload")
		}
		t.Logf("admitted %d, refused early %d, timed out %d", admitted, tooLong, timeout)
	})
}

func TestRoomFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxLength(2), queue.WithRejectTooLong(false))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		// The first is admitted at once; the next two fill the line.
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		for range 2 {
			go func() { _, _ = r.Wait(ctx) }()
		}
		synctest.Wait()
		start := time.Now()
		if _, err := r.Wait(ctx); !errors.Is(err, queue.ErrFull) {
			t.Fatalf("Wait on a full line: %v, want ErrFull", err)
		}
		if _, err := r.Join(ctx); !errors.Is(err, queue.ErrFull) {
			t.Fatalf("Join on a full line: %v, want ErrFull", err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("refusal took %v, want at once", d)
		}
		s, _ := r.Stats(ctx)
		if s.Length != 2 {
			t.Fatalf("length %d, want 2", s.Length)
		}
	})
}

func TestRoomMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxWait(3*time.Second), queue.WithMaxActive(1), queue.WithRejectTooLong(false))
		ctx := t.Context()
		a, err := r.Wait(ctx) // holds the only active slot
		if err != nil {
			t.Fatal(err)
		}
		defer a.Done()
		start := time.Now()
		_, err = r.Wait(ctx)
		if !errors.Is(err, queue.ErrWaitTimeout) {
			t.Fatalf("got %v, want ErrWaitTimeout", err)
		}
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("gave up after %v, want 3s", d)
		}
		if s, _ := r.Stats(ctx); s.Length != 0 {
			t.Fatalf("timed-out caller still in line: %d", s.Length)
		}
	})
}

func TestRoomRejectsWhenEstimateExceedsMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxWait(2500*time.Millisecond))
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		if _, err := r.Wait(ctx); err != nil { // admitted at once
			t.Fatal(err)
		}
		// Next admissions at 1s, 2s; a fourth would wait 3s.
		for range 2 {
			go func() { _, _ = r.Wait(ctx) }()
			synctest.Wait()
		}
		if _, err := r.Wait(ctx); !errors.Is(err, queue.ErrWaitTooLong) {
			t.Fatalf("got %v, want ErrWaitTooLong", err)
		}
		tk, err := r.Join(ctx)
		if !errors.Is(err, queue.ErrWaitTooLong) {
			t.Fatalf("Join: got %v %+v, want ErrWaitTooLong", err, tk)
		}
	})
}

func TestRoomCancelledWaiterGivesUpItsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1)
		ctx := t.Context()
		start := time.Now()
		first, _ := r.Wait(ctx) // at 0s
		defer first.Done()
		bctx, cancelB := context.WithCancel(ctx)
		bErr := make(chan error, 1)
		go func() { _, err := r.Wait(bctx); bErr <- err }() // due at 1s
		synctest.Wait()
		cAt := make(chan time.Duration, 1)
		go func() {
			a, err := r.Wait(ctx) // due at 2s, moves up to 1s
			if err != nil {
				t.Error(err)
			}
			a.Done()
			cAt <- time.Since(start)
		}()
		synctest.Wait()
		time.Sleep(500 * time.Millisecond)
		cancelB()
		if err := <-bErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled waiter got %v", err)
		}
		if at := <-cAt; at != time.Second {
			t.Fatalf("next in line admitted at %v, want 1s (the cancelled one's slot)", at)
		}
	})
}

func TestRoomTickets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithTicketTTL(5*time.Second), queue.WithPollInterval(100*time.Millisecond, 2*time.Second))
		ctx := t.Context()
		var ts []queue.Ticket
		for range 4 {
			tk, err := r.Join(ctx)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, tk)
		}
		if !ts[0].Admitted {
			t.Fatalf("first ticket in an idle room not admitted at once: %+v", ts[0])
		}
		for i, tk := range ts[1:] {
			if tk.Position != i+1 {
				t.Fatalf("ticket %d at position %d, want %d", i+1, tk.Position, i+1)
			}
			// The estimate comes from the measured outflow, which starts
			// at the configured rate.
			if want := time.Duration(i+1) * time.Second; tk.ETA < want*9/10 || tk.ETA > want*11/10 {
				t.Fatalf("ticket %d ETA %v, want %v", i+1, tk.ETA, want)
			}
			if tk.PollAfter < 100*time.Millisecond || tk.PollAfter > 2*time.Second {
				t.Fatalf("PollAfter %v out of bounds", tk.PollAfter)
			}
		}
		time.Sleep(1500 * time.Millisecond)
		s1, err := r.Status(ctx, ts[1].ID)
		if err != nil || !s1.Admitted {
			t.Fatalf("ticket 1 after 1.5s: %+v %v", s1, err)
		}
		s2, err := r.Status(ctx, ts[2].ID)
		if err != nil || s2.Admitted || s2.Position != 1 {
			t.Fatalf("ticket 2 after 1.5s: %+v %v", s2, err)
		}
		// Leave gives the place up.
		if err := r.Leave(ctx, ts[2].ID); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Status(ctx, ts[2].ID); !errors.Is(err, queue.ErrTicketExpired) {
			t.Fatalf("left ticket: %v", err)
		}
		s3, err := r.Status(ctx, ts[3].ID)
		if err != nil || s3.Position != 1 {
			t.Fatalf("ticket 3 after ticket 2 left: %+v %v", s3, err)
		}
		// A forged ID is not a ticket.
		forged := ts[3].ID[:len(ts[3].ID)-1] + "0"
		if forged == ts[3].ID {
			forged = ts[3].ID[:len(ts[3].ID)-1] + "1"
		}
		if _, err := r.Status(ctx, forged); !errors.Is(err, queue.ErrTicketExpired) {
			t.Fatalf("forged ticket: %v", err)
		}
	})
}

func TestRoomTicketExpiresWhenNotPolled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1, queue.WithMaxActive(1), queue.WithTicketTTL(2*time.Second),
			queue.WithPollInterval(100*time.Millisecond, time.Second))
		ctx := t.Context()
		holder, err := r.Wait(ctx) // takes the only active slot
		if err != nil {
			t.Fatal(err)
		}
		abandoned, _ := r.Join(ctx)
		kept, _ := r.Join(ctx)
		// Poll only the second for 5 s.
		for range 10 {
			time.Sleep(500 * time.Millisecond)
			if _, err := r.Status(ctx, kept.ID); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Status(ctx, abandoned.ID); !errors.Is(err, queue.ErrTicketExpired) {
			t.Fatalf("abandoned ticket: %v, want ErrTicketExpired", err)
		}
		s, err := r.Status(ctx, kept.ID)
		if err != nil || s.Position != 1 {
			t.Fatalf("kept ticket moved up to %+v %v, want position 1", s, err)
		}
		holder.Done()
		time.Sleep(time.Second)
		if s, err = r.Status(ctx, kept.ID); err != nil || !s.Admitted {
			t.Fatalf("kept ticket after the slot freed: %+v %v", s, err)
		}
	})
}

func TestRoomAdmissionLapses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 10, queue.WithMaxActive(1), queue.WithTicketTTL(2*time.Second),
			queue.WithAdmissionTTL(5*time.Second), queue.WithPollInterval(100*time.Millisecond, time.Second))
		ctx := t.Context()
		a, _ := r.Join(ctx) // admitted at once
		b, _ := r.Join(ctx)
		if !a.Admitted {
			t.Fatal("first ticket not admitted")
		}
		// a claims its admission, then never comes back: b waits for
		// the admission TTL.
		if _, err := r.Status(ctx, a.ID); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			time.Sleep(time.Second)
			s, err := r.Status(ctx, b.ID)
			if err != nil || s.Admitted {
				t.Fatalf("b admitted while a's admission lasts: %+v %v", s, err)
			}
		}
		time.Sleep(2 * time.Second)
		s, err := r.Status(ctx, b.ID)
		if err != nil || !s.Admitted {
			t.Fatalf("b after a's admission lapsed: %+v %v", s, err)
		}
		// b's admission ends with Done; the slot is free at once.
		if err := r.Done(ctx, b.ID); err != nil {
			t.Fatal(err)
		}
		c, _ := r.Join(ctx)
		if !c.Admitted {
			t.Fatalf("c not admitted after b's Done: %+v", c)
		}
	})
}

func TestRoomMaxActive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newRoom(t, 1000, queue.WithMaxActive(3))
		ctx := t.Context()
		var (
			mu     sync.Mutex
			active int
			peak   int
			wg     sync.WaitGroup
		)
		for i := range 50 {
			wg.Go(func() {
				a, err := r.Wait(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				active++
				peak = max(peak, active)
				mu.Unlock()
				time.Sleep(time.Duration(10+i%7) * time.Millisecond)
				mu.Lock()
				active--
				mu.Unlock()
				a.Done()
				a.Done() // counts once
			})
		}
		wg.Wait()
		if peak != 3 {
			t.Fatalf("peak active %d, want 3", peak)
		}
		if s, _ := r.Stats(ctx); s.Active != 0 || s.Length != 0 {
			t.Fatalf("stats after all done: %+v", s)
		}
	})
}

func TestRoomETAFollowsMeasuredOutflow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Configured for 100/s, but each admitted user holds one of 2
		// slots for 100 ms: the line really moves at 20/s.
		r := newRoom(t, 100, queue.WithMaxActive(2), queue.WithRejectTooLong(false))
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		defer wg.Wait()
		defer cancel()
		for range 2000 {
			wg.Go(func() {
				a, err := r.Wait(ctx)
				if err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
				a.Done()
			})
		}
		time.Sleep(60 * time.Second)
		s, err := r.Stats(ctx)
		defer cancel()
		if err != nil {
			t.Fatal(err)
		}
		if s.Outflow < 18 || s.Outflow > 22 {
			t.Fatalf("measured outflow %.1f/s, want about 20", s.Outflow)
		}
		// The estimate for a newcomer follows the measured rate, not the
		// configured one: about length/20 s.
		want := time.Duration(float64(s.Length) / 20 * float64(time.Second))
		if s.ETA < want*9/10 || s.ETA > want*11/10 {
			t.Fatalf("ETA %v for %d in line, want about %v", s.ETA, s.Length, want)
		}
		cancel()
	})
}

func TestRoomCloseWakesWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r, err := queue.NewRoom("close", 1)
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		if _, err := r.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		errs := make(chan error, 3)
		for range 3 {
			go func() { _, err := r.Wait(ctx); errs <- err }()
		}
		synctest.Wait()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := <-errs; !errors.Is(err, queue.ErrClosed) {
				t.Fatalf("waiter got %v, want ErrClosed", err)
			}
		}
		if _, err := r.Wait(ctx); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Wait after Close: %v", err)
		}
		if _, err := r.Join(ctx); !errors.Is(err, queue.ErrClosed) {
			t.Fatalf("Join after Close: %v", err)
		}
		if err := r.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

func TestRoomCancelledContext(t *testing.T) {
	r := newRoom(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled context: %v", err)
	}
}

func TestNewRoomValidates(t *testing.T) {
	cases := []struct {
		name  string
		room  string
		rate  float64
		opts  []queue.RoomOption
		field string
	}{
		{"empty name", "", 1, nil, "name"},
		{"braces", "a{b}", 1, nil, "name"},
		{"zero rate", "r", 0, nil, "perSecond"},
		{"negative rate", "r", -1, nil, "perSecond"},
		{"huge rate", "r", 2e6, nil, "perSecond"},
		{"negative active", "r", 1, []queue.RoomOption{queue.WithMaxActive(-1)}, "WithMaxActive"},
		{"zero length", "r", 1, []queue.RoomOption{queue.WithMaxLength(0)}, "WithMaxLength"},
		{"zero wait", "r", 1, []queue.RoomOption{queue.WithMaxWait(0)}, "WithMaxWait"},
		{"tiny ttl", "r", 1, []queue.RoomOption{queue.WithTicketTTL(time.Microsecond)}, "WithTicketTTL"},
		{"tiny admission ttl", "r", 1, []queue.RoomOption{queue.WithAdmissionTTL(0)}, "WithAdmissionTTL"},
		{"poll bounds", "r", 1, []queue.RoomOption{queue.WithPollInterval(2*time.Second, time.Second)}, "WithPollInterval"},
		{"poll beyond ttl", "r", 1, []queue.RoomOption{queue.WithPollInterval(time.Second, time.Minute)}, "WithPollInterval"},
		{"prefix", "r", 1, []queue.RoomOption{queue.WithKeyPrefix("a{")}, "WithKeyPrefix"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := queue.NewRoom(c.room, c.rate, c.opts...)
			if !errors.Is(err, queue.ErrInvalidConfig) {
				t.Fatalf("got %v, want ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Fatalf("error %q does not name %s", err, c.field)
			}
		})
	}
}

func TestTicketNumbers(t *testing.T) {
	// Tickets are numbered from 1 in joining order, in this process and
	// across the instances of a Redis room, and Status reports the same
	// number as Join.
	cases := map[string][]*queue.Room{
		"local": {newRoom(t, 1)},
		"redis": redisRooms(t, 2, 1),
	}
	for name, rooms := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			for i := range 4 {
				r := rooms[i%len(rooms)]
				tk, err := r.Join(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if want := uint64(i + 1); tk.Number != want {
					t.Fatalf("ticket %d joined with number %d, want %d", i, tk.Number, want)
				}
				st, err := rooms[(i+1)%len(rooms)].Status(ctx, tk.ID)
				if err != nil {
					t.Fatal(err)
				}
				if st.Number != tk.Number {
					t.Fatalf("Status says number %d, Join said %d", st.Number, tk.Number)
				}
			}
		})
	}
}
