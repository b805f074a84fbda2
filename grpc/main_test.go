package bulwarkgrpc_test

import (
	"testing"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }
