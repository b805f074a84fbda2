package queue

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// bufferTelemetry holds a buffer's instruments with their attribute set
// built once, so recording allocates nothing.
type bufferTelemetry struct {
	enqueued, duplicates                    metric.Int64Counter
	processed, retried, deferred, reclaimed metric.Int64Counter
	deadLettered, storeErrors               metric.Int64Counter
	attrs                                   []metric.AddOption

	reg metric.Registration
}

func newBufferTelemetry(mp metric.MeterProvider, store Store, b *Buffer) *bufferTelemetry {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(scope)
	kind := "redis"
	if _, ok := store.(*memoryStore); ok {
		kind = "memory"
	}
	set := attribute.NewSet(attrName.String(store.storeName()), attrStore.String(kind))
	t := &bufferTelemetry{attrs: []metric.AddOption{metric.WithAttributeSet(set)}}

	counterOf := func(name, desc, unit string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		handleOtelErr(err)
		return c
	}
	counter := func(name, desc string) metric.Int64Counter { return counterOf(name, desc, "{message}") }
	t.enqueued = counter("bulwark.queue.buffer.enqueued", "Messages added by Enqueue.")
	t.duplicates = counter("bulwark.queue.buffer.duplicates", "Enqueues refused as duplicates of an idempotency key.")
	t.processed = counter("bulwark.queue.buffer.processed", "Messages whose handler succeeded, acknowledged.")
	t.retried = counter("bulwark.queue.buffer.retried", "Failed attempts scheduled for a retry.")
	t.deferred = counter("bulwark.queue.buffer.deferred", "Deliveries deferred without using an attempt (WithDeferIf).")
	t.deadLettered = counter("bulwark.queue.buffer.dead_lettered", "Messages moved to the dead letters after their last attempt.")
	t.reclaimed = counter("bulwark.queue.buffer.reclaimed", "Messages taken over from a consumer whose lease lapsed.")
	t.storeErrors = counterOf("bulwark.queue.buffer.store_errors", "Failed calls to the store by the consumer loop.", "{error}")

	gauge := func(name, desc, unit string) metric.Int64ObservableGauge {
		g, err := m.Int64ObservableGauge(name, metric.WithDescription(desc), metric.WithUnit(unit))
		handleOtelErr(err)
		return g
	}
	depth := gauge("bulwark.queue.buffer.depth", "Messages held: waiting, in flight and delayed.", "{message}")
	pending := gauge("bulwark.queue.buffer.pending", "Messages delivered and not yet acknowledged.", "{message}")
	delayed := gauge("bulwark.queue.buffer.delayed", "Messages waiting out a retry backoff or a deferral.", "{message}")
	dead := gauge("bulwark.queue.buffer.dead_letters", "Dead letters held.", "{message}")
	paused := gauge("bulwark.queue.buffer.paused", "1 while this consumer's gate holds delivery, else 0.", "1")
	oldest, err := m.Float64ObservableGauge("bulwark.queue.buffer.oldest_age",
		metric.WithDescription("Age of the message at the head of the buffer."), metric.WithUnit("s"))
	handleOtelErr(err)

	obs := metric.WithAttributeSet(set)
	// Every consumer of a buffer reports the same store-wide figures; the
	// series are identical, so a dashboard takes any (or the max).
	t.reg, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		p := int64(0)
		if b.paused.Load() {
			p = 1
		}
		o.ObserveInt64(paused, p, obs)
		st, err := store.stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(depth, st.Depth, obs)
		o.ObserveInt64(pending, st.Pending, obs)
		o.ObserveInt64(delayed, st.Delayed, obs)
		o.ObserveInt64(dead, st.Dead, obs)
		o.ObserveFloat64(oldest, st.OldestAge.Seconds(), obs)
		return nil
	}, depth, pending, delayed, dead, paused, oldest)
	handleOtelErr(err)
	return t
}

func (t *bufferTelemetry) unregister() {
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
}

func (t *bufferTelemetry) add(ctx context.Context, c metric.Int64Counter, n int) {
	if n > 0 {
		c.Add(ctx, int64(n), t.attrs...)
	}
}
