package fleettest

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// dist summarises a sample of durations.
type dist struct {
	n                   int
	p50, p90, p99, max_ time.Duration
}

// distOf returns the distribution of ds, by the nearest-rank percentile.
func distOf(ds []time.Duration) dist {
	if len(ds) == 0 {
		return dist{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return dist{n: len(s), p50: rank(s, 50), p90: rank(s, 90), p99: rank(s, 99), max_: s[len(s)-1]}
}

// rank is the nearest-rank p-th percentile of sorted s.
func rank(s []time.Duration, p float64) time.Duration {
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func (d dist) String() string {
	if d.n == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v (n=%d)", round(d.p50), round(d.p90), round(d.p99), round(d.max_), d.n)
}

// round shows a duration with three significant figures or so.
func round(d time.Duration) time.Duration {
	switch {
	case d >= 10*time.Millisecond:
		return d.Round(100 * time.Microsecond)
	case d >= 100*time.Microsecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

// ms shows an instant as milliseconds since origin (both ns, Redis' clock).
func ms(origin, t int64) string {
	return fmt.Sprintf("%+.1fms", float64(t-origin)/1e6)
}

// msOr is ms, or instead for a zero t.
func msOr(origin, t int64, instead string) string {
	if t == 0 {
		return instead
	}
	return ms(origin, t)
}
