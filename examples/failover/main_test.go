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

// line is one second of the run: label, wxpay, alipay, declined,
// unavailable, wxpay failed, wxpay skipped, the two breakers' states.
var line = regexp.MustCompile(`^(\d+)-(\d+)s +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +(\S+) +(\S+)$`)

type secondLine struct {
	wxpay, alipay, declined, unavailable int
	wxpayBreaker                         string
}

func TestFailoverDemo(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-quick"}, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	text := out.String()

	var seconds []secondLine
	for _, l := range strings.Split(text, "\n") {
		m := line.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
		if n(1) != len(seconds) {
			t.Fatalf("line %q out of order", l)
		}
		seconds = append(seconds, secondLine{n(3), n(4), n(5), n(6), m[9]})
	}
	if len(seconds) != 8 {
		t.Fatalf("%d lines of seconds, want 8", len(seconds))
	}

	// Before the outage (0-2s) wxpay serves everything.
	for i, s := range seconds[:2] {
		if s.wxpay == 0 || s.alipay != 0 || s.unavailable != 0 || s.wxpayBreaker != "closed" {
			t.Errorf("second %d, before the outage: %+v", i, s)
		}
	}
	// In the outage's last full second (4-5s) alipay serves everything.
	if s := seconds[4]; s.alipay == 0 || s.wxpay != 0 {
		t.Errorf("second 4, in the outage: %+v", s)
	}
	// No payment failed for want of a gateway, and cards were declined.
	declined := 0
	for i, s := range seconds {
		declined += s.declined
		if s.unavailable != 0 {
			t.Errorf("second %d: %+v", i, s)
		}
	}
	if declined == 0 {
		t.Error("no card was declined")
	}

	for _, want := range []string{
		"wxpay starts failing",
		"breaker payments/wxpay: closed -> open",
		"breaker payments/wxpay: open -> half-open",
		"wxpay recovers",
		"breaker payments/wxpay: half-open -> closed",
		"check: no card declined by wxpay was re-sent to alipay: ok",
		"check: alipay served only while wxpay was failing: ok",
		"check: wxpay serves again at the end: ok",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(text, "alipay: closed -> open") {
		t.Error("the healthy backup's breaker opened")
	}
}

func TestFailoverDemoFlags(t *testing.T) {
	for _, args := range [][]string{{"-nope"}, {"-duration", "3s"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, &out); err == nil {
			t.Errorf("run accepted %v", args)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out); err != nil || !strings.Contains(out.String(), "-quick") {
		t.Errorf("-h: %v, %q", err, &out)
	}
}

// A cancelled run (Ctrl-C) stops at once without a summary.
func TestFailoverDemoCancelled(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	if err := run(ctx, nil, &out); err == nil {
		t.Error("a cancelled run returned no error")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancelled run took %v", d)
	}
	if strings.Contains(out.String(), "check:") {
		t.Error("a cancelled run printed the checks")
	}
}
