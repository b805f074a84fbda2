package queue_test

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/bulwarkgo/bulwark/queue"
)

func TestBufferMetrics(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, be backend) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
		b := newBuffer(t, be.newStore(t), queue.WithMeterProvider(mp), queue.WithMaxAttempts(2))
		ctx := context.Background()
		if _, err := b.Enqueue(ctx, "good", []byte("ok")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Enqueue(ctx, "bad", []byte("fail")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Enqueue(ctx, "bad", []byte("fail")); err != nil {
			t.Fatal(err)
		}
		rec := newRecorder(func(m queue.Message) error {
			if string(m.Body) == "fail" {
				return errors.New("declined")
			}
			return nil
		})
		stop := runBuffer(t, b, rec.handle)
		waitFor(t, "one processed and one dead", func() bool {
			st := stats(t, b)
			return rec.doneCount() == 1 && st.Dead == 1 && st.Depth == 0
		})
		_ = stop()

		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{
			"bulwark.queue.buffer.enqueued":      2,
			"bulwark.queue.buffer.duplicates":    1,
			"bulwark.queue.buffer.processed":     1,
			"bulwark.queue.buffer.retried":       1,
			"bulwark.queue.buffer.dead_lettered": 1,
			"bulwark.queue.buffer.depth":         0,
			"bulwark.queue.buffer.pending":       0,
			"bulwark.queue.buffer.delayed":       0,
			"bulwark.queue.buffer.dead_letters":  1,
			"bulwark.queue.buffer.paused":        0,
		}
		got := map[string]int64{}
		for _, sm := range rm.ScopeMetrics {
			if sm.Scope.Name != "github.com/bulwarkgo/bulwark/queue" {
				continue
			}
			for _, m := range sm.Metrics {
				var points []metricdata.DataPoint[int64]
				switch d := m.Data.(type) {
				case metricdata.Sum[int64]:
					points = d.DataPoints
				case metricdata.Gauge[int64]:
					points = d.DataPoints
				case metricdata.Gauge[float64]:
					if m.Name != "bulwark.queue.buffer.oldest_age" || m.Unit != "s" {
						t.Errorf("unexpected float gauge %s (%s)", m.Name, m.Unit)
					}
					continue
				}
				for _, p := range points {
					if v, _ := p.Attributes.Value(attribute.Key("bulwark.queue.name")); v.AsString() != "orders" {
						t.Errorf("%s: attributes %v, want bulwark.queue.name=orders", m.Name, p.Attributes.ToSlice())
					}
					got[m.Name] += p.Value
				}
			}
		}
		for name, v := range want {
			if g, ok := got[name]; !ok || g != v {
				t.Errorf("%s = %d (reported: %v), want %d", name, g, ok, v)
			}
		}
	})
}
