package faulttest

import (
	"context"
	"log"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietDials{})
	redistest.Main(m)
}

// quietDials drops go-redis' report of each failed dial, thousands of lines
// while these tests keep Redis down on purpose, and logs everything else.
type quietDials struct{}

func (quietDials) Printf(_ context.Context, format string, v ...any) {
	if strings.Contains(format, "failed to dial") {
		return
	}
	log.Printf("redis: "+format, v...)
}
