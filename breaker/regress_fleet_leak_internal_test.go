package breaker

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

// A Fleet forgets the names of breakers that are gone, so that
// resubscribing does not read the state of breakers that no longer exist.
func TestRegressionFleetForgetsCollectedBreakers(t *testing.T) {
	c := redistest.Client(t)
	f, err := NewFleet(context.Background(), c, WithFleetPrefix(redistest.Prefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for i := range 1000 {
		New[int]("dep-"+strconv.Itoa(i), WithFleet(f))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		f.mu.Lock()
		n := len(f.members)
		f.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d names of collected breakers stay in the Fleet", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
