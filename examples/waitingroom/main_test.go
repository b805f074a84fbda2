package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var (
	summary = regexp.MustCompile(`(?m)^(\d+) users admitted in \S+; (\d+) orders for (\d+) items; (\d+) sold out$`)
	seen    = regexp.MustCompile(`(?m)^   user (\d+) +place (\d+) +estimated \S+ +waited \S+ +polls (\d+) +-> (order #\d+|sold out)$`)
	rate    = regexp.MustCompile(`(?m)^observed admission rate (\d+)/s`)
)

func check(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	args = append([]string{"-addr", "127.0.0.1:0", "-exit", "-users", "200", "-stock", "120", "-rate", "100"}, args...)
	if err := run(ctx, args, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	m := summary.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatal("no summary line")
	}
	if m[1] != "200" || m[2] != "120" || m[3] != "120" || m[4] != "80" {
		t.Errorf("summary %q: want 200 admitted, 120 orders, 80 sold out", m[0])
	}
	lines := seen.FindAllStringSubmatch(out.String(), -1)
	if len(lines) < 4 {
		t.Fatalf("%d sample users printed", len(lines))
	}
	// Later arrivals stand further back in line.
	last := -1
	for _, l := range lines[1:] {
		place, _ := strconv.Atoi(l[2])
		if place < last {
			t.Errorf("user %s at place %d after a user at place %d", l[1], place, last)
		}
		last = place
	}
	if last < 20 {
		t.Errorf("the last user was at place %d: no line formed", last)
	}
	r := rate.FindStringSubmatch(out.String())
	if r == nil {
		t.Fatal("no observed rate")
	}
	// Seen through 100 ms polling, so only roughly.
	if n, _ := strconv.Atoi(r[1]); n < 70 || n > 130 {
		t.Errorf("observed rate %d/s, want about 100", n)
	}
}

func TestFlashSale(t *testing.T) { check(t) }

func TestFlashSaleTwoInstancesOnRedis(t *testing.T) {
	check(t, "-redis", redistest.Addr(t))
}
