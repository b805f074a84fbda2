package breaker_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/bulwarkgo/bulwark/breaker"
)

func groupBenchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "host-" + strconv.Itoa(i) + ".example"
	}
	return keys
}

// BenchmarkGroupExecute calls through a group of 1000 known keys, serially
// and from parallel goroutines that each walk the keys from their own
// place. "breaker" is one Breaker's Execute, for the group's overhead.
func BenchmarkGroupExecute(b *testing.B) {
	const nkeys = 1024 // a power of two, so the key is picked with a mask
	keys := groupBenchKeys(nkeys)
	g := breaker.NewGroup[int]("bench")
	ctx := context.Background()
	for _, k := range keys {
		if _, err := g.Execute(ctx, k, groupOK); err != nil {
			b.Fatal(err)
		}
	}

	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			_, _ = g.Execute(ctx, keys[i&(nkeys-1)], groupOK)
			i++
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		var start atomic.Int64
		b.RunParallel(func(pb *testing.PB) {
			i := int(start.Add(nkeys / 16))
			for pb.Next() {
				_, _ = g.Execute(ctx, keys[i&(nkeys-1)], groupOK)
				i++
			}
		})
	})
	b.Run("breaker", func(b *testing.B) {
		b.ReportAllocs()
		br := breaker.New[int]("bench")
		for b.Loop() {
			_, _ = br.Execute(ctx, groupOK)
		}
	})
}

// BenchmarkGroupNewKey is the cost of a key the group has not seen: a new
// breaker, and an eviction once the group is full.
func BenchmarkGroupNewKey(b *testing.B) {
	g := breaker.NewGroup[int]("bench", breaker.WithMaxKeys(1000))
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		_, _ = g.Execute(ctx, "host-"+strconv.Itoa(i), groupOK)
		i++
	}
}
