package queue

import "go.opentelemetry.io/otel/metric"

// Option configures both a [Room] and a [Buffer].
type Option interface {
	RoomOption
	BufferOption
}

type meterOption struct{ mp metric.MeterProvider }

func (o meterOption) applyRoom(c *roomConfig)     { c.meterProvider = o.mp }
func (o meterOption) applyBuffer(c *bufferConfig) { c.meterProvider = o.mp }

// WithMeterProvider sets where a room's or buffer's metrics go. The
// default, also used for nil, is the global provider from
// go.opentelemetry.io/otel at construction time.
func WithMeterProvider(mp metric.MeterProvider) Option { return meterOption{mp} }

// KeyPrefixOption configures the Redis keys of both a [Room] with
// [WithRedis] and a Redis store ([NewRedisStore]).
type KeyPrefixOption interface {
	RoomOption
	RedisStoreOption
}

type keyPrefixOption string

func (p keyPrefixOption) applyRoom(c *roomConfig)        { c.prefix = string(p) }
func (p keyPrefixOption) applyRedisStore(c *storeConfig) { c.prefix = string(p) }

// WithKeyPrefix sets the prefix of every Redis key of a room or a store.
// Each keeps all its keys under the hash tag {name}, so the prefix must
// not contain '{' or '}'. Rooms and buffers of the same name may share a
// prefix: their keys differ. The default is "bulwark:queue:".
func WithKeyPrefix(prefix string) KeyPrefixOption { return keyPrefixOption(prefix) }
