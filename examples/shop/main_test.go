package main

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// syncBuffer is an output the scenario and the shops may write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// playScenario plays a short scenario and checks that every invariant held.
func playScenario(t *testing.T, args ...string) {
	t.Helper()
	var out syncBuffer
	args = append([]string{"-exit", "-addr", "127.0.0.1:0", "-duration", "9s", "-rate", "20"}, args...)
	err := run(t.Context(), args, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ok   no item oversold", "ok   no accepted order lost", "ok   FIFO admission",
		"ok   backup used only while the primary was down", "ok   declines are final"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the summary lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "FAIL") {
		t.Error("a check failed")
	}
}

func TestScenarioInMemory(t *testing.T) { playScenario(t) }

func TestScenarioTwoShopsOnRedis(t *testing.T) {
	playScenario(t, "-redis", redistest.Addr(t), "-prefix", redistest.Prefix(t), "-instances", "2")
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-instances", "2"},
		{"-duration", "1s"},
		{"-rate", "0"},
		{"-load", "-1"},
		{"-stock", "-5"},
		{"-addr", "nonsense"},
		{"extra"},
	} {
		var out syncBuffer
		if err := run(t.Context(), append([]string{"-exit"}, args...), &out); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}
