package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/bulwarkgo/bulwark/examples/shop/internal/shop"
	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/queue"
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

func TestShutdownFinishesPaymentsAndEndsEventStreams(t *testing.T) {
	// Shutdown waits for an order whose payment is under way and lets it
	// complete, while the console's event stream, which never ends by
	// itself, is cut at once.
	o, err := parse([]string{"-serve-only"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	in, err := startInstance(t.Context(), shop.Config{
		Stock:         map[string]int64{"mooncake-box": 5, "rice-cooker": 5, "tea-set": 5},
		Rate:          100,
		OperatorToken: o.token,
		ViewerToken:   shop.NewToken(),
	}, "", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			in.close()
		}
	})
	if err := in.shop.SetProvider(t.Context(), api.ProviderFault{Name: shop.Primary, LatencyMS: 500}); err != nil {
		t.Fatal(err)
	}

	get := func(method, path string, hdr map[string]string, body string) *http.Response {
		req, _ := http.NewRequest(method, in.url+path, strings.NewReader(body))
		req.Header.Set(api.UserHeader, "closer")
		req.Header.Set("Content-Type", "application/json")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	var v queue.TicketView
	resp := get("POST", "api/sale/line", nil, "")
	_ = json.NewDecoder(resp.Body).Decode(&v)
	resp.Body.Close()
	for !v.Admitted {
		time.Sleep(20 * time.Millisecond)
		resp = get("GET", "api/sale/line?ticket="+v.Ticket, nil, "")
		_ = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
	}

	events := get("GET", "admin/api/events", map[string]string{"Authorization": "Bearer " + o.token}, "")
	defer events.Body.Close()
	if events.StatusCode != 200 {
		t.Fatalf("event stream: %d", events.StatusCode)
	}
	ordered := make(chan *http.Response, 1)
	go func() {
		ordered <- get("POST", "api/sale/orders", map[string]string{queue.AdmissionHeader: v.Token}, `{"sku":"tea-set","card":"`+api.CardOK+`"}`)
	}()
	time.Sleep(150 * time.Millisecond) // the payment is under way
	start := time.Now()
	in.close()
	closed = true
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("shutdown took %v: the event stream held it", d)
	}
	r := <-ordered
	defer r.Body.Close()
	var rep api.OrderReply
	_ = json.NewDecoder(r.Body).Decode(&rep)
	if r.StatusCode != http.StatusCreated || rep.Status != api.StatusPaid {
		t.Fatalf("the order in flight at shutdown: %d %+v", r.StatusCode, rep)
	}
}
