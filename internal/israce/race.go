//go:build race

package israce

// Enabled reports whether the binary was built with -race, under which
// allocation counts are not meaningful.
const Enabled = true
