package batch

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// req doubles in; sentBy is the id of the caller that carried it.
type req struct {
	Member[*req]
	in, out int
	sentBy  any
	err     error
}

type idKey struct{}

// withID returns a context naming its caller, to see who carries a batch.
func withID(id int) context.Context { return context.WithValue(context.Background(), idKey{}, id) }

// double answers each request after a millisecond on the wire and records
// each batch.
type double struct {
	mu                sync.Mutex
	batches           [][]int // the ins of each batch sent
	onWire, maxOnWire int
}

func (d *double) send(ctx context.Context, batch []*req) {
	d.mu.Lock()
	d.batches = append(d.batches, ins(batch))
	d.onWire++
	d.maxOnWire = max(d.maxOnWire, d.onWire)
	d.mu.Unlock()

	time.Sleep(time.Millisecond)
	for _, r := range batch {
		r.out, r.sentBy = 2*r.in, ctx.Value(idKey{})
	}

	d.mu.Lock()
	d.onWire--
	d.mu.Unlock()
}

func ins(batch []*req) []int {
	ins := make([]int, len(batch))
	for i, r := range batch {
		ins[i] = r.in
	}
	return ins
}

func fail(batch []*req, panicked any) {
	for _, r := range batch {
		r.err = fmt.Errorf("panic: %v", panicked)
	}
}

func newBatcher(maxInflight, maxBatch int, send func(context.Context, []*req)) *Batcher[*req] {
	return &Batcher[*req]{MaxInflight: maxInflight, MaxBatch: maxBatch, Send: send, Fail: fail}
}

// checkIdle fails t unless b has no batch on the wire and nobody in line.
func checkIdle(t *testing.T, b *Batcher[*req]) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inflight != 0 || len(b.pending) != 0 {
		t.Errorf("inflight=%d pending=%d, want both 0", b.inflight, len(b.pending))
	}
}

// A lone caller sends its request at once, alone, in its own goroutine.
func TestLoneCallerSendsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := &double{}
		b := newBatcher(4, 64, d.send)
		start := time.Now()
		r := &req{in: 21}
		if err := b.Do(withID(1), r); err != nil {
			t.Fatal(err)
		}
		if r.out != 42 || r.sentBy != 1 {
			t.Errorf("out=%d sentBy=%v, want 42 and 1", r.out, r.sentBy)
		}
		if waited := time.Since(start); waited != time.Millisecond {
			t.Errorf("took %v, want one round trip", waited)
		}
		checkIdle(t, b)
	})
}

// Under load at most MaxInflight batches are on the wire, batches hold at
// most MaxBatch requests, and the number of calls falls well below the
// number of requests.
func TestBatchesUnderLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const callers, maxInflight, maxBatch = 200, 4, 8
		d := &double{}
		b := newBatcher(maxInflight, maxBatch, d.send)
		var wg sync.WaitGroup
		for i := range callers {
			wg.Go(func() {
				r := &req{in: i}
				if err := b.Do(withID(i), r); err != nil {
					t.Error(err)
				}
				if r.out != 2*i {
					t.Errorf("request %d: out=%d", i, r.out)
				}
			})
		}
		wg.Wait()
		checkIdle(t, b)

		seen := 0
		for _, ins := range d.batches {
			if len(ins) > maxBatch {
				t.Errorf("batch of %d, want at most %d", len(ins), maxBatch)
			}
			seen += len(ins)
		}
		if seen != callers {
			t.Errorf("%d requests sent, want %d", seen, callers)
		}
		if d.maxOnWire != maxInflight {
			t.Errorf("%d batches on the wire at once, want %d", d.maxOnWire, maxInflight)
		}
		// 4 sent alone, then the other 196 in full batches of 8.
		if want := maxInflight + (callers-maxInflight+maxBatch-1)/maxBatch; len(d.batches) != want {
			t.Errorf("%d calls for %d requests, want %d", len(d.batches), callers, want)
		}
	})
}

// gate holds each batch on the wire until released, and tells the ins of
// each batch it sends on sent.
type gate struct {
	sent    chan []int
	release chan struct{}
}

func newGate() *gate { return &gate{sent: make(chan []int), release: make(chan struct{})} }

func (g *gate) send(ctx context.Context, batch []*req) {
	g.sent <- ins(batch)
	<-g.release
	for _, r := range batch {
		r.out, r.sentBy = 2*r.in, ctx.Value(idKey{})
	}
}

// When a batch returns, the first in line carries the next one, in its own
// goroutine, with the longest-waiting requests after it; the others get
// their results from it.
func TestFirstInLineCarriesNextBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		b := newBatcher(1, 3, g.send)
		var wg sync.WaitGroup
		rs := make([]*req, 5)
		for i := range rs {
			rs[i] = &req{in: i}
			wg.Go(func() {
				if err := b.Do(withID(i), rs[i]); err != nil {
					t.Error(err)
				}
			})
			if i == 0 {
				<-g.sent // the wire is full
			}
			synctest.Wait() // in line in order
		}
		close(g.release)
		for _, want := range [][]int{{1, 2, 3}, {4}} {
			if got := <-g.sent; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("batch %v, want %v", got, want)
			}
		}
		wg.Wait()
		for i, r := range rs {
			leader := map[int]int{0: 0, 1: 1, 2: 1, 3: 1, 4: 4}[i]
			if r.out != 2*i || r.sentBy != leader {
				t.Errorf("request %d: out=%d sent by %v, want %d by %d", i, r.out, r.sentBy, 2*i, leader)
			}
		}
		checkIdle(t, b)
	})
}

// A caller whose context ends while it waits in line leaves the line,
// unsent, and gets the context's error; the line goes on without it.
func TestCallerLeavesLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		b := newBatcher(1, 64, g.send)
		var wg sync.WaitGroup
		wg.Go(func() { b.Do(withID(0), &req{}) })
		<-g.sent

		ctx, cancel := context.WithCancel(withID(1))
		leaver := &req{in: 1}
		wg.Go(func() {
			if err := b.Do(ctx, leaver); !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
		})
		stayer := &req{in: 2}
		wg.Go(func() {
			if err := b.Do(withID(2), stayer); err != nil {
				t.Error(err)
			}
		})
		synctest.Wait()
		cancel()
		synctest.Wait()
		close(g.release)
		if got := <-g.sent; fmt.Sprint(got) != "[2]" {
			t.Errorf("next batch %v, want only the caller still in line", got)
		}
		wg.Wait()
		if leaver.sentBy != nil || stayer.out != 4 {
			t.Errorf("leaver sent by %v, stayer out=%d", leaver.sentBy, stayer.out)
		}
		checkIdle(t, b)
	})
}

// A caller whose request is on the wire when its context ends waits for
// the round trip and gets its result; the call itself is not cancelled,
// even when that caller carries it.
func TestCallerOnTheWireWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		var sendCtxErr error
		b := newBatcher(1, 64, func(ctx context.Context, batch []*req) {
			g.send(ctx, batch)
			sendCtxErr = ctx.Err()
		})
		leadCtx, cancelLead := context.WithCancel(withID(0))
		memberCtx, cancelMember := context.WithCancel(withID(1))
		first, leader, member := &req{in: 0}, &req{in: 1}, &req{in: 2}
		var wg sync.WaitGroup
		wg.Go(func() { b.Do(withID(9), first) })
		<-g.sent
		returned := make(chan struct{}, 2)
		for _, c := range []struct {
			ctx context.Context
			r   *req
		}{{leadCtx, leader}, {memberCtx, member}} {
			wg.Go(func() {
				if err := b.Do(c.ctx, c.r); err != nil {
					t.Errorf("request %d: %v", c.r.in, err)
				}
				returned <- struct{}{}
			})
			synctest.Wait()
		}
		g.release <- struct{}{}
		if got := <-g.sent; fmt.Sprint(got) != "[1 2]" {
			t.Fatalf("batch %v on the wire, want [1 2]", got)
		}
		cancelLead()
		cancelMember()
		synctest.Wait()
		if len(returned) != 0 {
			t.Fatal("a caller returned before its round trip")
		}
		close(g.release)
		wg.Wait()
		if leader.out != 2 || member.out != 4 {
			t.Errorf("leader out=%d, member out=%d, want 2 and 4", leader.out, member.out)
		}
		if sendCtxErr != nil {
			t.Errorf("Send's context: %v, want not cancelled", sendCtxErr)
		}
		checkIdle(t, b)
	})
}

// A panic in Send gives every member of the batch its error, hands the
// line on, and goes on up in the carrier's goroutine.
func TestSendPanics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		b := newBatcher(1, 2, func(ctx context.Context, batch []*req) {
			g.send(ctx, batch)
			if batch[0].in == 1 {
				panic("hook failed")
			}
		})
		rs := make([]*req, 5)
		var wg sync.WaitGroup
		for i := range rs {
			rs[i] = &req{in: i}
			wg.Go(func() {
				defer func() {
					p := recover()
					if (p != nil) != (i == 1) {
						t.Errorf("request %d: recovered %v", i, p)
					}
				}()
				b.Do(withID(i), rs[i])
			})
			if i == 0 {
				<-g.sent
			}
			synctest.Wait()
		}
		close(g.release)
		for range 2 { // {1, 2}, which panics, then {3, 4}
			<-g.sent
		}
		wg.Wait()
		for i, r := range rs {
			wantErr := i == 1 || i == 2
			if wantErr != (r.err != nil) || !wantErr && r.out != 2*i {
				t.Errorf("request %d: out=%d err=%v", i, r.out, r.err)
			}
		}
		if want := "panic: hook failed"; rs[2].err == nil || rs[2].err.Error() != want {
			t.Errorf("err = %v, want %q", rs[2].err, want)
		}
		checkIdle(t, b)
	})
}

// Send ending its goroutine (t.FailNow in a fake, say) fails the batch
// and frees its place on the wire.
func TestSendExitsGoroutine(t *testing.T) {
	b := newBatcher(1, 64, func(ctx context.Context, batch []*req) { runtime.Goexit() })
	r := &req{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.Do(context.Background(), r)
	}()
	<-done
	if r.err == nil || r.err.Error() != "panic: <nil>" {
		t.Errorf("err = %v, want Fail's", r.err)
	}
	checkIdle(t, b)
}

// A reused request costs no allocation of the Batcher's own: the one per
// batch is context.WithoutCancel's.
func TestDoAllocatesOnlyTheSendContext(t *testing.T) {
	b := newBatcher(4, 64, func(context.Context, []*req) {})
	r := &req{}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() { b.Do(ctx, r) }); n > 1 {
		t.Errorf("%v allocations per lone Do, want at most 1", n)
	}
}

func BenchmarkDo(b *testing.B) {
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		bt := newBatcher(4, 64, func(context.Context, []*req) {})
		r := &req{}
		b.ReportAllocs()
		for b.Loop() {
			bt.Do(ctx, r)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		// A round trip long enough for callers to line up.
		bt := newBatcher(4, 64, func(context.Context, []*req) { time.Sleep(10 * time.Microsecond) })
		b.SetParallelism(16)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			r := &req{}
			for pb.Next() {
				bt.Do(ctx, r)
			}
		})
	})
}
