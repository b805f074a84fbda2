package sharded

import (
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCountAndCapacity(t *testing.T) {
	for _, maxKeys := range []int{1, 15, 16, 17, 1000, 100_000, 1 << 22} {
		n := Count(maxKeys)
		if n < 1 || n&(n-1) != 0 {
			t.Errorf("Count(%d) = %d, want a power of two", maxKeys, n)
		}
		if n > 1 && maxKeys/n < MinKeys {
			t.Errorf("Count(%d) = %d leaves shards under %d keys", maxKeys, n, MinKeys)
		}
		sum := 0
		for i := range n {
			sum += Capacity(maxKeys, n, i)
		}
		if sum != maxKeys {
			t.Errorf("capacities of %d add up to %d", maxKeys, sum)
		}
	}
}

func TestJanitor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sweeps atomic.Int32
		stop := StartJanitor("test", time.Second, func() { sweeps.Add(1) })
		time.Sleep(3*time.Second + time.Millisecond)
		stop()
		stop()
		if n := sweeps.Load(); n != 3 {
			t.Fatalf("%d sweeps in 3s, want 3", n)
		}
	})
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for a zero interval")
		}
	}()
	StartJanitor("test", 0, func() {})
}
