//go:build !race

// Package israce tells tests whether the race detector is on.
package israce

// Enabled reports whether the binary was built with -race, under which
// allocation counts are not meaningful.
const Enabled = false
