package queue

import (
	"context"
	"errors"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// scope is the instrumentation scope of every instrument in this package.
const scope = "github.com/bulwarkgo/bulwark/queue"

// Attribute keys used on this package's instruments.
const (
	attrName   = attribute.Key("bulwark.queue.name")
	attrStore  = attribute.Key("bulwark.queue.store") // "memory" or "redis"
	attrReason = attribute.Key("bulwark.queue.reason")
)

// Reasons recorded on bulwark.queue.room.rejected.
const (
	reasonFull = iota
	reasonTooLong
	reasonTimeout
	reasonCancelled
	reasonExpired
	reasonClosed
	reasonUnavailable
	numReasons
)

var reasonNames = [numReasons]string{"full", "too_long", "timeout", "cancelled", "expired", "closed", "unavailable"}

// roomTelemetry holds a room's instruments with their attribute sets built
// once, so recording allocates nothing.
type roomTelemetry struct {
	joinedC   metric.Int64Counter
	admittedC metric.Int64Counter
	rejectedC metric.Int64Counter
	waitH     metric.Float64Histogram
	// Option slices built once: passing a single option to a variadic
	// parameter would allocate the slice on every call.
	add     []metric.AddOption
	record  []metric.RecordOption
	reasons [numReasons][]metric.AddOption

	meter metric.Meter
	attrs attribute.Set
	reg   metric.Registration
}

func newRoomTelemetry(mp metric.MeterProvider, name string, redis bool) *roomTelemetry {
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(scope)
	store := "memory"
	if redis {
		store = "redis"
	}
	base := []attribute.KeyValue{attrName.String(name), attrStore.String(store)}
	t := &roomTelemetry{meter: m, attrs: attribute.NewSet(base...)}
	t.add = []metric.AddOption{metric.WithAttributeSet(t.attrs)}
	t.record = []metric.RecordOption{metric.WithAttributeSet(t.attrs)}
	for i := range numReasons {
		kv := append(append([]attribute.KeyValue(nil), base...), attrReason.String(reasonNames[i]))
		t.reasons[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
	}
	var err error
	t.joinedC, err = m.Int64Counter("bulwark.queue.room.joined",
		metric.WithDescription("Tickets that joined the line."), metric.WithUnit("{ticket}"))
	handleOtelErr(err)
	t.admittedC, err = m.Int64Counter("bulwark.queue.room.admitted",
		metric.WithDescription("Tickets admitted."), metric.WithUnit("{ticket}"))
	handleOtelErr(err)
	t.rejectedC, err = m.Int64Counter("bulwark.queue.room.rejected",
		metric.WithDescription("Callers refused or tickets lost, by reason."), metric.WithUnit("{ticket}"))
	handleOtelErr(err)
	t.waitH, err = m.Float64Histogram("bulwark.queue.room.wait.duration",
		metric.WithDescription("Time from joining the line to admission."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
	handleOtelErr(err)
	return t
}

func handleOtelErr(err error) {
	if err != nil {
		otel.Handle(err)
	}
}

// observe registers the gauges that read the room's state at collection.
func (t *roomTelemetry) observe(r *Room) {
	length, err := t.meter.Int64ObservableGauge("bulwark.queue.room.length",
		metric.WithDescription("Tickets in line."), metric.WithUnit("{ticket}"))
	handleOtelErr(err)
	active, err := t.meter.Int64ObservableGauge("bulwark.queue.room.active",
		metric.WithDescription("Admissions not yet done or lapsed."), metric.WithUnit("{ticket}"))
	handleOtelErr(err)
	eta, err := t.meter.Float64ObservableGauge("bulwark.queue.room.eta",
		metric.WithDescription("Estimated wait of a ticket joining now."), metric.WithUnit("s"))
	handleOtelErr(err)
	outflow, err := t.meter.Float64ObservableGauge("bulwark.queue.room.outflow",
		metric.WithDescription("Measured admissions per second while the line is not empty."), metric.WithUnit("{ticket}/s"))
	handleOtelErr(err)
	t.reg, err = t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s, err := r.b.stats(ctx)
		if err != nil {
			return err
		}
		o.ObserveInt64(length, int64(s.Length), metric.WithAttributeSet(t.attrs))
		o.ObserveInt64(active, int64(s.Active), metric.WithAttributeSet(t.attrs))
		o.ObserveFloat64(eta, s.ETA.Seconds(), metric.WithAttributeSet(t.attrs))
		o.ObserveFloat64(outflow, s.Outflow, metric.WithAttributeSet(t.attrs))
		return nil
	}, length, active, eta, outflow)
	handleOtelErr(err)
}

func (t *roomTelemetry) unregister() {
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
}

func (t *roomTelemetry) joined(ctx context.Context) {
	t.joinedC.Add(ctx, 1, t.add...)
}

func (t *roomTelemetry) admitted(ctx context.Context, waited time.Duration) {
	t.admittedC.Add(ctx, 1, t.add...)
	t.waitH.Record(ctx, waited.Seconds(), t.record...)
}

func (t *roomTelemetry) lost(ctx context.Context, reason int, n int) {
	if n > 0 {
		t.rejectedC.Add(ctx, int64(n), t.reasons[reason]...)
	}
}

// rejected counts a refusal by its error.
func (t *roomTelemetry) rejected(ctx context.Context, err error) {
	t.lost(ctx, reasonOf(err), 1)
}

func reasonOf(err error) int {
	switch {
	case errors.Is(err, ErrFull):
		return reasonFull
	case errors.Is(err, ErrWaitTooLong):
		return reasonTooLong
	case errors.Is(err, ErrWaitTimeout):
		return reasonTimeout
	case errors.Is(err, ErrClosed):
		return reasonClosed
	case errors.Is(err, ErrUnavailable):
		return reasonUnavailable
	case errors.Is(err, ErrTicketExpired):
		return reasonExpired
	}
	return reasonCancelled
}
