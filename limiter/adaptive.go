package limiter

// adaptiveConfig is filled by AdaptiveOptions.
type adaptiveConfig struct {
	commonConfig
}
