package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

var line = regexp.MustCompile(`^   #(\d+) +(\d{3}) .*RateLimit-Remaining: (\d+) +Retry-After: (\S+)$`)

// response is one printed answer of the self-drive.
type response struct {
	status     int
	remaining  int
	retryAfter string
}

func TestMiddlewareDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-addr", "127.0.0.1:0", "-exit"}, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)

	text := out.String()
	if !regexp.MustCompile(`(?m)^listening on http://127\.0\.0\.1:[1-9]\d*/$`).MatchString(text) {
		t.Errorf("output does not give the real listening address")
	}
	if !strings.Contains(text, "limit: 5 requests per 1s per client IP, bursts of 10") {
		t.Errorf("output does not state the limit")
	}

	// Split the answers into the demo's three steps.
	var steps [][]response
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "1. ") || strings.HasPrefix(l, "2. ") || strings.HasPrefix(l, "3. ") {
			steps = append(steps, nil)
			continue
		}
		m := line.FindStringSubmatch(l)
		if m == nil || len(steps) == 0 {
			continue
		}
		status, _ := strconv.Atoi(m[2])
		remaining, _ := strconv.Atoi(m[3])
		steps[len(steps)-1] = append(steps[len(steps)-1], response{status, remaining, m[4]})
	}
	if len(steps) != 3 || len(steps[0]) != 15 || len(steps[1]) != 3 || len(steps[2]) != 3 {
		t.Fatalf("want 15, 3 and 3 answers in three steps, got %v", steps)
	}

	burst := steps[0]
	for i, r := range burst[:10] {
		if r.status != 200 || r.remaining != 9-i || r.retryAfter != "-" {
			t.Errorf("burst request %d: %+v, want 200 with %d remaining and no Retry-After", i+1, r, 9-i)
		}
	}
	// Tokens come back every 200ms, so on a slow machine one of the five
	// over the burst may still get through; most must not.
	limited := 0
	for i, r := range burst[10:] {
		if r.status == 429 {
			limited++
			if r.remaining != 0 || r.retryAfter != "1" {
				t.Errorf("request %d: %+v, want 0 remaining and Retry-After 1", i+11, r)
			}
		}
	}
	if limited < 3 {
		t.Errorf("only %d of the 5 requests over the burst were limited", limited)
	}
	if !strings.Contains(text, `body: {"error":"rate_limited","message":"请求过于频繁，请稍后再试","retry_after_seconds":1}`) {
		t.Errorf("output lacks the 429 body")
	}

	// A fresh bucket would say 9 remaining.
	for i, r := range steps[1] {
		if r.remaining > 1 {
			t.Errorf("forged X-Forwarded-For request %d: %+v got a fresh bucket", i+1, r)
		}
	}

	for i, r := range steps[2] {
		if r.status != 200 {
			t.Errorf("after the refill, request %d: %+v, want 200", i+1, r)
		}
	}
}

func TestMiddlewareDemoBadFlag(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-nope"}, &out); err == nil {
		t.Error("run accepted an unknown flag")
	}
}
