package queue_test

import (
	"context"
	"errors"
	"testing"

	"github.com/bulwarkgo/bulwark/queue"
)

// BenchmarkRoomRefuse measures the answer to a caller who finds the line
// full: the path every surplus user of a flash sale takes.
func BenchmarkRoomRefuse(b *testing.B) {
	r, err := queue.NewRoom("bench", 1, queue.WithMaxLength(1), queue.WithMaxActive(1), queue.WithRejectTooLong(false))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := r.Wait(ctx) // admitted at once, holds the only slot
	if err != nil {
		b.Fatal(err)
	}
	defer a.Done()
	parked := make(chan error, 1)
	go func() { _, err := r.Wait(ctx); parked <- err }() // fills the line
	for {
		if s, _ := r.Stats(ctx); s.Length == 1 {
			break
		}
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Wait(ctx); !errors.Is(err, queue.ErrFull) {
				b.Error(err)
				return
			}
		}
	})
	cancel()
	<-parked
}

// BenchmarkRoomWait measures Wait and Done when the room has room: a
// rate no benchmark reaches, so every caller is admitted at once.
func BenchmarkRoomWait(b *testing.B) {
	for _, mode := range []string{"serial", "parallel"} {
		b.Run("mode="+mode, func(b *testing.B) {
			r, err := queue.NewRoom("bench", 1e6)
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			ctx := context.Background()
			b.ReportAllocs()
			one := func() {
				a, err := r.Wait(ctx)
				if err != nil {
					b.Error(err)
					return
				}
				a.Done()
			}
			if mode == "serial" {
				for b.Loop() {
					one()
				}
				return
			}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					one()
				}
			})
		})
	}
}

// BenchmarkRoomStatus measures a poll of a ticket in a line of 10 000.
func BenchmarkRoomStatus(b *testing.B) {
	r, err := queue.NewRoom("bench", 0.001, queue.WithRejectTooLong(false))
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	ids := make([]string, 10_000)
	for i := range ids {
		t, err := r.Join(ctx)
		if err != nil {
			b.Fatal(err)
		}
		ids[i] = t.ID
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := r.Status(ctx, ids[i%len(ids)]); err != nil {
				b.Error(err)
				return
			}
			i += 7919
		}
	})
}
