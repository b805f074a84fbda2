package breaker

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// scope is the instrumentation scope of this package's instruments.
const scope = "github.com/bulwarkgo/bulwark/breaker"

// outcomeRejected extends Outcome for the calls counter.
const (
	outcomeRejected = int(Ignored) + 1
	numOutcomes     = outcomeRejected + 1
)

var outcomeNames = [numOutcomes]string{"success", "failure", "ignored", "rejected"}

// instruments are one breaker's metrics, with attribute sets made once so
// that recording allocates nothing.
type instruments struct {
	calls       metric.Int64Counter
	callOpts    [numOutcomes][]metric.AddOption
	transitions metric.Int64Counter
	transOpts   [3][3][]metric.AddOption // [from][to]
}

// newInstruments registers the metrics of a breaker. state reads the
// breaker's state for the gauge, or reports false once it is gone: the
// gauge's callback must not keep the breaker alive, and New unregisters the
// returned registration (nil when there is none) when the breaker is
// collected.
func newInstruments(c *config, name string, state func() (State, bool)) (*instruments, metric.Registration) {
	mp := c.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(scope)
	nameAttr := attribute.String("bulwark.breaker.name", name)
	in := &instruments{}
	var err error
	if in.calls, err = m.Int64Counter("bulwark.breaker.calls",
		metric.WithDescription("Calls through circuit breakers, by outcome."),
		metric.WithUnit("{call}")); err != nil {
		otel.Handle(err)
	}
	if in.transitions, err = m.Int64Counter("bulwark.breaker.transitions",
		metric.WithDescription("Changes of circuit breaker state."),
		metric.WithUnit("{transition}")); err != nil {
		otel.Handle(err)
	}
	for o := range numOutcomes {
		set := attribute.NewSet(nameAttr, attribute.String("bulwark.breaker.outcome", outcomeNames[o]))
		in.callOpts[o] = []metric.AddOption{metric.WithAttributeSet(set)}
	}
	for from := range 3 {
		for to := range 3 {
			set := attribute.NewSet(nameAttr,
				attribute.String("bulwark.breaker.from", State(from).String()),
				attribute.String("bulwark.breaker.to", State(to).String()))
			in.transOpts[from][to] = []metric.AddOption{metric.WithAttributeSet(set)}
		}
	}
	if c.noStateGauge {
		return in, nil
	}
	gauge, err := m.Int64ObservableGauge("bulwark.breaker.state",
		metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open."),
		metric.WithUnit("{state}"))
	if err != nil {
		otel.Handle(err)
	}
	attrs := metric.WithAttributeSet(attribute.NewSet(nameAttr))
	reg, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if s, ok := state(); ok {
			o.ObserveInt64(gauge, int64(s), attrs)
		}
		return nil
	}, gauge)
	if err != nil {
		otel.Handle(err)
		return in, nil
	}
	return in, reg
}

func (in *instruments) call(ctx context.Context, outcome int) {
	in.calls.Add(ctx, 1, in.callOpts[outcome]...)
}

func (in *instruments) transition(e StateChange) {
	if e.From >= 0 && e.From < 3 && e.To >= 0 && e.To < 3 {
		in.transitions.Add(context.Background(), 1, in.transOpts[e.From][e.To]...)
	}
}
