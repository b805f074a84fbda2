package limiter

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// scope is the instrumentation scope of every instrument in this package.
const scope = "github.com/bulwarkgo/bulwark/limiter"

// Attribute keys used on this package's instruments.
const (
	attrName     = attribute.Key("bulwark.limiter.name")
	attrKind     = attribute.Key("bulwark.limiter.kind")
	attrResult   = attribute.Key("bulwark.limiter.result")
	attrFallback = attribute.Key("bulwark.limiter.fallback")
)

// Results recorded on bulwark.limiter.decisions.
const (
	resultAllowed = iota
	resultLimited
	resultError
	numResults
)

var resultNames = [numResults]string{"allowed", "limited", "error"}

// meter returns the configured meter, defaulting to the global provider.
func (c *commonConfig) meter() metric.Meter {
	mp := c.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return mp.Meter(scope)
}

// baseAttrs are the attributes every instrument of one limiter carries.
func (c *commonConfig) baseAttrs(kind string) []attribute.KeyValue {
	name := c.name
	if name == "" {
		name = kind
	}
	return []attribute.KeyValue{attrName.String(name), attrKind.String(kind)}
}

// decisionCounter counts decisions by result with attribute sets computed
// once, so recording allocates nothing.
type decisionCounter struct {
	counter metric.Int64Counter
	// opts[fallback][result]
	opts [2][numResults][]metric.AddOption
}

func newDecisionCounter(m metric.Meter, base []attribute.KeyValue) decisionCounter {
	c, err := m.Int64Counter("bulwark.limiter.decisions",
		metric.WithDescription("Rate limit decisions, by limiter and result."),
		metric.WithUnit("{decision}"))
	if err != nil {
		otel.Handle(err)
	}
	d := decisionCounter{counter: c}
	for fb := range 2 {
		for r := range numResults {
			kv := append(append([]attribute.KeyValue(nil), base...),
				attrResult.String(resultNames[r]), attrFallback.Bool(fb == 1))
			d.opts[fb][r] = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(kv...))}
		}
	}
	return d
}

// record counts one decision. fallback marks decisions made without the
// limiter's backend (see [OutagePolicy]).
func (d *decisionCounter) record(ctx context.Context, dec Decision, err error, fallback bool) {
	r := resultAllowed
	switch {
	case err != nil:
		r = resultError
	case !dec.Allowed:
		r = resultLimited
	}
	fb := 0
	if fallback {
		fb = 1
	}
	d.counter.Add(ctx, 1, d.opts[fb][r]...)
}
