package breaker_test

import (
	"context"
	"errors"
	"testing"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func BenchmarkExecute(b *testing.B) {
	ctx := context.Background()
	b.Run("closed/serial", func(b *testing.B) {
		br := breaker.New[int]("bench")
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Execute(ctx, ok); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("closed/parallel", func(b *testing.B) {
		br := breaker.New[int]("bench")
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := br.Execute(ctx, ok); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	open := func(b *testing.B) *breaker.Breaker[int] {
		br := breaker.New[int]("bench", breaker.WithTripPolicy(breaker.ConsecutiveFailures(1)))
		br.Execute(ctx, fail)
		if br.State() != breaker.StateOpen {
			b.Fatal("did not open")
		}
		return br
	}
	b.Run("open/serial", func(b *testing.B) {
		br := open(b)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := br.Execute(ctx, ok); !errors.Is(err, breaker.ErrOpen) {
				b.Fatal(err)
			}
		}
	})
	b.Run("open/parallel", func(b *testing.B) {
		br := open(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				br.Execute(ctx, ok)
			}
		})
	})
}

// BenchmarkFleetClosedExecute shows that a closed breaker shared through a
// Fleet costs what a local one does: calls never touch Redis.
func BenchmarkFleetClosedExecute(b *testing.B) {
	c := redistest.Client(b)
	fleet, err := breaker.NewFleet(context.Background(), c, breaker.WithFleetPrefix(redistest.Prefix(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer fleet.Close()
	br := breaker.New[int]("bench", breaker.WithFleet(fleet))
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := br.Execute(ctx, ok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
