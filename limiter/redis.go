package limiter

// redisConfig is filled by RedisOptions.
type redisConfig struct {
	commonConfig
}
