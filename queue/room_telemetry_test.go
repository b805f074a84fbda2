package queue_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func roomMetrics(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != "github.com/bulwarkgo/bulwark/queue" {
			t.Fatalf("scope %q", sm.Scope.Name)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

// roomCount returns the sum of a counter's points whose reason is reason
// ("" for any).
func roomCount(t *testing.T, ms map[string]metricdata.Aggregation, name, reason string) int64 {
	t.Helper()
	s, ok := ms[name].(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s: %T", name, ms[name])
	}
	var n int64
	for _, p := range s.DataPoints {
		if v, _ := p.Attributes.Value(attribute.Key("bulwark.queue.reason")); reason == "" || v.AsString() == reason {
			if room, _ := p.Attributes.Value("bulwark.queue.name"); room.AsString() != "metrics" {
				t.Fatalf("room attribute %q", room.AsString())
			}
			n += p.Value
		}
	}
	return n
}

func TestRoomMetrics(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		r, err := queue.NewRoom("metrics", 1, queue.WithMeterProvider(mp), queue.WithMaxLength(2), queue.WithMaxActive(1),
			queue.WithTicketTTL(2*time.Second), queue.WithPollInterval(time.Second, time.Second))
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx := t.Context()
		a, _ := r.Wait(ctx) // admitted at once, holds the only slot
		defer a.Done()
		if _, err := r.Join(ctx); err != nil { // expires unpolled
			t.Fatal(err)
		}
		waitCtx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { _, err := r.Wait(waitCtx); errc <- err }() // second in line
		synctest.Wait()
		if _, err := r.Join(ctx); !errors.Is(err, queue.ErrFull) {
			t.Fatalf("third: %v, want ErrFull", err)
		}

		ms := roomMetrics(t, reader)
		if g := ms["bulwark.queue.room.length"].(metricdata.Gauge[int64]).DataPoints[0].Value; g != 2 {
			t.Errorf("length gauge %d, want 2", g)
		}
		if g := ms["bulwark.queue.room.eta"].(metricdata.Gauge[float64]).DataPoints[0].Value; g < 1 {
			t.Errorf("eta gauge %v, want at least 1s", g)
		}
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second)
		_, _ = r.Stats(ctx) // the sweep finds the expired ticket

		ms = roomMetrics(t, reader)
		for name, want := range map[string]int64{"bulwark.queue.room.joined": 3, "bulwark.queue.room.admitted": 1} {
			if got := roomCount(t, ms, name, ""); got != want {
				t.Errorf("%s = %d, want %d", name, got, want)
			}
		}
		for reason, want := range map[string]int64{"full": 1, "cancelled": 1, "expired": 1} {
			if got := roomCount(t, ms, "bulwark.queue.room.rejected", reason); got != want {
				t.Errorf("rejected{%s} = %d, want %d", reason, got, want)
			}
		}
		h := ms["bulwark.queue.room.wait.duration"].(metricdata.Histogram[float64])
		if h.DataPoints[0].Count != 1 {
			t.Errorf("wait histogram count %d, want 1", h.DataPoints[0].Count)
		}
	})
}
