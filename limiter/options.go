package limiter

import (
	"go.opentelemetry.io/otel/metric"
)

// Option configures any limiter in this package: [NewLocal], [NewRedis] and
// [NewAdaptive] all accept it.
type Option interface {
	LocalOption
	RedisOption
	AdaptiveOption
}

// LocalOption configures a [Local] limiter.
type LocalOption interface{ applyLocal(*localConfig) }

// RedisOption configures a [Redis] limiter.
type RedisOption interface{ applyRedis(*redisConfig) }

// AdaptiveOption configures an [Adaptive] limiter.
type AdaptiveOption interface{ applyAdaptive(*adaptiveConfig) }

// commonConfig holds what every limiter has: a name for telemetry and the
// meter provider.
type commonConfig struct {
	name          string
	meterProvider metric.MeterProvider
}

type commonOption func(*commonConfig)

func (o commonOption) applyLocal(c *localConfig)       { o(&c.commonConfig) }
func (o commonOption) applyRedis(c *redisConfig)       { o(&c.commonConfig) }
func (o commonOption) applyAdaptive(c *adaptiveConfig) { o(&c.commonConfig) }

// WithName names the limiter in its telemetry (the bulwark.limiter.name
// attribute). The default is the limiter's kind: "local", "redis" or
// "adaptive".
func WithName(name string) Option {
	return commonOption(func(c *commonConfig) { c.name = name })
}

// WithMeterProvider sets where the limiter's metrics go. The default is the
// global provider from go.opentelemetry.io/otel at construction time.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return commonOption(func(c *commonConfig) { c.meterProvider = mp })
}

type localOptionFunc func(*localConfig)

func (f localOptionFunc) applyLocal(c *localConfig) { f(c) }

type redisOptionFunc func(*redisConfig)

func (f redisOptionFunc) applyRedis(c *redisConfig) { f(c) }

type adaptiveOptionFunc func(*adaptiveConfig)

func (f adaptiveOptionFunc) applyAdaptive(c *adaptiveConfig) { f(c) }
