package limiter

// localConfig is filled by LocalOptions.
type localConfig struct {
	commonConfig
}
