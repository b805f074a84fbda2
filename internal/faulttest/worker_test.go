package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
)

// workerEnv carries a workerSpec to TestBufferWorker in a process of its
// own; without it that test is skipped.
const workerEnv = "BULWARK_FAULTTEST_WORKER"

// workerSpec tells a worker process where its buffer is.
type workerSpec struct {
	Addr     string `json:"addr"`
	Prefix   string `json:"prefix"`
	Consumer string `json:"consumer"`
}

const (
	// workerOrders is how many orders the buffer holds at the start.
	workerOrders = 10_000
	// workerConcurrency is each worker's WithConcurrency: at most this
	// many orders are in flight in a worker when it is killed.
	workerConcurrency = 8
	// workerVisibility is the lease on a delivered order: a killed
	// worker's orders go to another within one and a half of it.
	workerVisibility = time.Second
)

// The keys the workers' handler writes: the hash of each order's effect
// (set once) and the hash of each order's deliveries (counted each time).
func effectsKey(prefix string) string    { return prefix + "effects" }
func deliveriesKey(prefix string) string { return prefix + "deliveries" }

// TestBufferWorker is the consumer of TestBufferWorkerKilled, run by it in
// a process of its own with a workerSpec in workerEnv. It consumes the
// buffer until its standard input closes, then stops gracefully.
func TestBufferWorker(t *testing.T) {
	raw := os.Getenv(workerEnv)
	if raw == "" {
		t.Skip("runs only in a process started by TestBufferWorkerKilled")
	}
	var spec workerSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(&redis.Options{Addr: spec.Addr})
	defer client.Close()
	st, err := queue.NewRedisStore(client, "orders", queue.WithKeyPrefix(spec.Prefix))
	if err != nil {
		t.Fatal(err)
	}
	b, err := queue.NewBuffer(st, queue.WithConsumer(spec.Consumer), queue.WithConcurrency(workerConcurrency),
		queue.WithVisibilityTimeout(workerVisibility), queue.WithBufferPollInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, stop := context.WithCancel(context.Background())
	stdinClosed := make(chan struct{})
	go func() {
		defer close(stdinClosed)
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	effects, deliveries := effectsKey(spec.Prefix), deliveriesKey(spec.Prefix)
	var handled atomic.Int64
	// Delivery is at least once: the handler applies an order in one
	// transaction that counts the delivery and records the effect only if
	// the order has none yet, so an order delivered again has no second
	// effect.
	err = b.Run(ctx, func(ctx context.Context, m queue.Message) error {
		order := string(m.Body)
		_, err := client.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HIncrBy(ctx, deliveries, order, 1)
			p.HSetNX(ctx, effects, order, spec.Consumer)
			return nil
		})
		if err == nil {
			handled.Add(1)
		}
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v", err)
	}
	<-stdinClosed
	t.Logf("worker %s handled %d orders", spec.Consumer, handled.Load())
}

// worker is a TestBufferWorker process.
type worker struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer
}

// syncBuffer collects a worker's output, written by exec's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startWorker runs TestBufferWorker in a new process of this test binary.
func startWorker(t *testing.T, spec workerSpec) *worker {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	w := &worker{name: spec.Consumer, out: &syncBuffer{}}
	w.cmd = exec.Command(exe, "-test.run=^TestBufferWorker$", "-test.count=1", "-test.v", "-test.timeout=5m")
	w.cmd.Env = append(os.Environ(), workerEnv+"="+string(raw))
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	if w.stdin, err = w.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Ends a worker the test did not end itself.
		if w.cmd.ProcessState == nil {
			_ = w.cmd.Process.Kill()
			_ = w.cmd.Wait()
		}
	})
	return w
}

// stop ends the worker gracefully and reports its output if it failed.
func (w *worker) stop(t *testing.T) {
	t.Helper()
	_ = w.stdin.Close()
	if err := w.cmd.Wait(); err != nil {
		t.Errorf("%s: %v\n%s", w.name, err, w.out.String())
	}
}

// A buffer of 10,000 orders is consumed by a worker in a process of its
// own, which is killed with SIGKILL when about a third of the orders are
// done; a second worker, under another consumer name, takes over. The
// Buffer's docs promise: "Delivery is at least once: each message is
// leased to one consumer ... a consumer that dies loses its lease and
// another takes the message over", within one and a half visibility
// timeouts. So every order has exactly one effect (none is lost, the
// idempotent handler applies none twice), and no more orders are delivered
// twice than the dead worker held unacknowledged, which is at most its
// concurrency.
func TestBufferWorkerKilled(t *testing.T) {
	srv := redistest.StartServer(t)
	prefix := redistest.Prefix(t)
	client := newClient(t, srv.Addr)
	st, err := queue.NewRedisStore(client, "orders", queue.WithKeyPrefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	b, err := queue.NewBuffer(st)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	start := time.Now()
	orders := make([]string, workerOrders)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < workerOrders; i = int(next.Add(1)) - 1 {
				order := fmt.Sprintf("order-%05d", i)
				orders[i] = order
				if _, err := b.Enqueue(bg, order, []byte(order)); err != nil {
					t.Errorf("Enqueue %s: %v", order, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("enqueued %d orders in %v", workerOrders, time.Since(start).Round(time.Millisecond))

	effects, deliveries := effectsKey(prefix), deliveriesKey(prefix)
	done := func() int64 {
		n, err := client.HLen(bg, effects).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := startWorker(t, workerSpec{Addr: srv.Addr, Prefix: prefix, Consumer: "worker-1"})
	waitFor(t, 60*time.Second, "the first worker to do a third of the orders", func() bool { return done() >= workerOrders/3 })
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()
	killedAt := time.Now()
	doneAtKill := done()
	// What the dead worker held: delivered to it and not acknowledged.
	stats, err := b.Stats(bg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("worker-1 killed with SIGKILL after %d orders; %d in flight", doneAtKill, stats.Pending)
	if stats.Pending > workerConcurrency {
		t.Errorf("%d orders in flight in a worker of concurrency %d", stats.Pending, workerConcurrency)
	}

	second := startWorker(t, workerSpec{Addr: srv.Addr, Prefix: prefix, Consumer: "worker-2"})
	waitFor(t, 60*time.Second, "the buffer to be drained", func() bool {
		st, err := b.Stats(bg)
		if err != nil {
			t.Fatal(err)
		}
		return st.Depth == 0 && st.Pending == 0
	})
	t.Logf("worker-2 drained the buffer %v after worker-1 was killed", time.Since(killedAt).Round(time.Millisecond))
	second.stop(t)

	effectOf, err := client.HGetAll(bg, effects).Result()
	if err != nil {
		t.Fatal(err)
	}
	deliveredTimes, err := client.HGetAll(bg, deliveries).Result()
	if err != nil {
		t.Fatal(err)
	}
	var lost, repeated int
	byWorker := map[string]int{}
	for _, order := range orders {
		by, ok := effectOf[order]
		if !ok {
			lost++
			continue
		}
		byWorker[by]++
		if n, _ := strconv.Atoi(deliveredTimes[order]); n > 1 {
			repeated++
		}
	}
	t.Logf("%d orders: %d with their effect (%d by worker-1, %d by worker-2), %d lost, %d delivered more than once",
		workerOrders, len(effectOf), byWorker["worker-1"], byWorker["worker-2"], lost, repeated)
	if lost != 0 || len(effectOf) != workerOrders {
		t.Errorf("%d orders lost, %d effects for %d orders", lost, len(effectOf), workerOrders)
	}
	if int64(repeated) > stats.Pending {
		t.Errorf("%d orders delivered more than once, more than the %d in flight when worker-1 was killed", repeated, stats.Pending)
	}
	if st, err := b.Stats(bg); err != nil || st.Dead != 0 {
		t.Errorf("dead letters after the run: %+v, %v", st, err)
	}
}
