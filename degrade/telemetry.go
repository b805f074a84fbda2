package degrade

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// scope is the instrumentation scope of every instrument in this package.
const scope = "github.com/bulwarkgo/bulwark/degrade"

// Attribute keys used on this package's instruments.
const (
	attrFeature = attribute.Key("bulwark.degrade.feature")
	attrLevel   = attribute.Key("bulwark.degrade.level")
	attrSource  = attribute.Key("bulwark.degrade.source")
	attrResult  = attribute.Key("bulwark.degrade.result")
	attrTrigger = attribute.Key("bulwark.degrade.trigger")
	attrAction  = attribute.Key("bulwark.degrade.action")
)

// telemetry holds a switchboard's instruments. Attribute sets are built
// once, so recording allocates nothing.
type telemetry struct {
	checks    metric.Int64Counter // nil unless WithCheckMetrics
	checkOpts map[string]*[2][]metric.AddOption

	unknown, storeErrors, dropped, firings metric.Int64Counter

	mu       sync.Mutex
	fireOpts map[[2]string][]metric.AddOption

	reg metric.Registration
}

func newTelemetry(c *config, s *Switchboard) *telemetry {
	mp := c.meter
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	m := mp.Meter(scope)
	t := &telemetry{fireOpts: make(map[[2]string][]metric.AddOption)}
	counter := func(name, desc, unit string) metric.Int64Counter {
		ctr, err := m.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit(unit))
		if err != nil {
			otel.Handle(err)
		}
		return ctr
	}
	if c.checks {
		t.checks = counter("bulwark.degrade.checks", "Enabled and Check calls, by feature and result.", "{check}")
		t.checkOpts = make(map[string]*[2][]metric.AddOption, len(s.names))
		for _, n := range s.names {
			var o [2][]metric.AddOption
			for i, r := range [2]string{"off", "on"} {
				o[i] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrFeature.String(n), attrResult.String(r)))}
			}
			t.checkOpts[n] = &o
		}
	}
	t.unknown = counter("bulwark.degrade.unknown", "Names checked that are not features, each counted once.", "{feature}")
	t.storeErrors = counter("bulwark.degrade.store.errors", "Failed reads of the store; the last known state is kept.", "{error}")
	t.dropped = counter("bulwark.degrade.events.dropped", "Change events dropped because listeners fell behind.", "{event}")
	t.firings = counter("bulwark.degrade.trigger.firings", "Triggers firing and recovering.", "{firing}")

	state, err := m.Float64ObservableGauge("bulwark.degrade.feature.state",
		metric.WithDescription("Each feature's state: 1 on, 0 off, the share of users for a percentage; rules are not counted."),
		metric.WithUnit("1"))
	if err != nil {
		otel.Handle(err)
	}
	t.reg, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		for _, st := range s.Features() {
			v := 1.0
			switch st.State.Mode {
			case Off:
				v = 0
			case Percent:
				v = st.State.Percent / 100
			}
			o.ObserveFloat64(state, v, metric.WithAttributes(attrFeature.String(st.Name),
				attrLevel.String(st.Level.String()), attrSource.String(string(st.Source))))
		}
		return nil
	}, state)
	if err != nil {
		otel.Handle(err)
	}
	return t
}

func (t *telemetry) check(d *decision, on bool) {
	o := t.checkOpts[d.salt]
	i := 0
	if on {
		i = 1
	}
	t.checks.Add(context.Background(), 1, o[i]...)
}

func (t *telemetry) unknownFeature() { t.unknown.Add(context.Background(), 1) }
func (t *telemetry) storeError()     { t.storeErrors.Add(context.Background(), 1) }
func (t *telemetry) eventDropped()   { t.dropped.Add(context.Background(), 1) }

func (t *telemetry) triggered(name string, fired bool) {
	action := "recover"
	if fired {
		action = "fire"
	}
	key := [2]string{name, action}
	t.mu.Lock()
	o, ok := t.fireOpts[key]
	if !ok {
		o = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrTrigger.String(name), attrAction.String(action)))}
		t.fireOpts[key] = o
	}
	t.mu.Unlock()
	t.firings.Add(context.Background(), 1, o...)
}

func (t *telemetry) unregister() {
	if t.reg != nil {
		_ = t.reg.Unregister()
	}
}
