package queue

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// BenchmarkRedisRoomTicket measures the ticket API's round trips: one
// script each. "admitted" is a whole ticket's life in a room that admits at
// once (Join, Status claiming the admission, Done); "inline" is Join and
// Status in a line that keeps growing, where Status finds a place in line.
func BenchmarkRedisRoomTicket(b *testing.B) {
	b.Run("admitted", func(b *testing.B) {
		r, _ := newTestRedisRoom(b, 1e6)
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				t, err := r.Join(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := r.Status(ctx, t.ID); err != nil {
					b.Error(err)
					return
				}
				if err := r.Done(ctx, t.ID); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("inline", func(b *testing.B) {
		r, _ := newTestRedisRoom(b, 1e-3, WithMaxLength(1<<30), WithRejectTooLong(false))
		ctx := context.Background()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				t, err := r.Join(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				if _, err := r.Status(ctx, t.ID); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkRedisRoomWait measures Wait and Done in a room that admits at
// once: two scripts, no poller round.
func BenchmarkRedisRoomWait(b *testing.B) {
	r, _ := newTestRedisRoom(b, 1e6)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			a, err := r.Wait(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			a.Done()
		}
	})
}

// BenchmarkRedisRoomPollRound measures one poller round for an instance
// whose callers all wait: "quick" names the first pollBatch of them (Redis
// looks at one), "full" refreshes pollChunk of them (one script call).
func BenchmarkRedisRoomPollRound(b *testing.B) {
	for _, bc := range []struct {
		name string
		full bool
		n    int
	}{{"quick", false, pollBatch}, {"full", true, pollChunk}} {
		b.Run(bc.name, func(b *testing.B) {
			r, rb := newTestRedisRoom(b, 1e6, WithMaxActive(1))
			ctx := context.Background()
			if _, err := r.Join(ctx); err != nil { // takes the only slot
				b.Fatal(err)
			}
			ws := make([]*redisWaiter, bc.n)
			for i := range ws {
				t, _, err := rb.join(ctx, false) // not registered: no poller
				if err != nil {
					b.Fatal(err)
				}
				ws[i] = &redisWaiter{id: t.ID, seq: idSeq(t.ID), ch: make(chan struct{})}
			}
			rb.mu.Lock()
			rb.waiters = ws
			rb.mu.Unlock()
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := rb.round(bc.full); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			rb.mu.Lock()
			rb.waiters = nil
			rb.mu.Unlock()
		})
	}
}

// BenchmarkRedisRoomAdmissionRate measures how closely two instances
// sharing a line keep to the rate when callers arrive at twice the rate:
// one op is one admission, and rate_error_% is the deviation of the
// measured rate from the configured one, after the first admission (which
// an idle room makes at once). The rate is measured where callers see it,
// after their instance's poller noticed the admission, so a run much
// shorter than the default second measures the pollers' lag instead.
func BenchmarkRedisRoomAdmissionRate(b *testing.B) {
	const rate = 2000.0
	addr := redistest.Addr(b)
	prefix := redistest.Prefix(b)
	var rooms [2]*Room
	for i := range rooms {
		r, err := NewRoom("rate", rate, WithRedis(redistest.NewClient(b, addr)), WithKeyPrefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		rooms[i] = r
	}
	n := int64(b.N + 1)
	var (
		count       atomic.Int64
		first, last atomic.Int64 // ns
		wg          sync.WaitGroup
		done        = make(chan struct{})
	)
	wait := func(r *Room) {
		a, err := r.Wait(context.Background())
		if err != nil {
			return // ErrClosed once the measure is over
		}
		a.Done()
		switch k := count.Add(1); {
		case k == 1:
			first.Store(time.Now().UnixNano())
		case k == n:
			last.Store(time.Now().UnixNano())
			close(done)
		}
	}
	// Arrivals at twice the rate, evenly spread, alternating instances.
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	for started := 0; ; {
		due := int(time.Since(start).Seconds() * 2 * rate)
		for ; started < due; started++ {
			wg.Go(func() { wait(rooms[started%2]) })
		}
		select {
		case <-tick.C:
			continue
		case <-done:
		}
		break
	}
	tick.Stop()
	for _, r := range rooms {
		_ = r.Close()
	}
	wg.Wait()
	if n > 1 {
		got := float64(n-1) / (float64(last.Load()-first.Load()) / 1e9)
		b.ReportMetric(got, "admitted/s")
		b.ReportMetric(100*(got-rate)/rate, "rate_error_%")
	}
}
