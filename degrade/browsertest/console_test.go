package browsertest

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bulwarkgo/bulwark/degrade"
)

const (
	operatorToken = "op-token-0123456789abcdef"
	viewerToken   = "viewer-token-0123456789abcdef"
)

// chromium returns the browser to drive, or skips the test.
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("BULWARK_CHROMIUM"), "/usr/bin/chromium"} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const how = "Chromium not found at $BULWARK_CHROMIUM, /usr/bin/chromium or on PATH; install it with `apt-get install -y chromium`"
	if os.Getenv("CI") != "" {
		t.Fatal(how)
	}
	t.Skip(how + " (skipping: CI is not set)")
	return ""
}

// browser starts headless Chromium and returns a tab's context. The
// page's exceptions and Content-Security-Policy violations fail t; its
// other console output is logged.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.NoSandbox, // as root, as in CI
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx)
	// Start the browser without a deadline: it lives as long as ctx.
	if err := chromedp.Do(ctx); err != nil {
		cancelTab()
		cancelAlloc()
		t.Fatalf("starting Chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	var mu sync.Mutex
	var problems []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			t.Logf("page console: %s", m)
			if m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
				mu.Lock()
				problems = append(problems, m.String())
				mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		cancelTab()
		cancelAlloc()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, p := range problems {
			t.Errorf("the page reported: %s", p)
		}
	})
	tctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(cancel)
	return tctx
}

func newServer(t *testing.T) (*degrade.Switchboard, *httptest.Server) {
	t.Helper()
	sb, err := degrade.New([]degrade.Feature{
		{Name: "checkout", Level: degrade.Core, Description: "下单 Ordering"},
		{Name: "search-suggest", Level: degrade.Important},
		{Name: "recommend", Level: degrade.Optional, Description: "猜你喜欢 Recommendations"},
		{Name: "reviews", Level: degrade.Optional, Off: true},
		// Text that would be markup if the console ever wrote HTML.
		{Name: "xss", Level: degrade.Optional, Description: `<img src=x onerror="window.pwned=1"><b>bold</b>`},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sb.Close() })
	h, err := degrade.NewAdminHandler(sb, degrade.WithTokens(map[string]degrade.Principal{
		operatorToken: {Name: "alice", Role: degrade.Operator},
		viewerToken:   {Name: "victor", Role: degrade.Viewer},
	}))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	// Closed before the switchboard (cleanups run last first); the
	// page's event stream ends with the browser, which closes before.
	t.Cleanup(srv.Close)
	return sb, srv
}

func signIn(ctx context.Context, token string) error {
	return chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), token),
		chromedp.Click(chromedp.CSS("#signin-btn")),
	)
}

// text returns the visible text of the element sel selects.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func eval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

func TestConsoleFlipsASwitch(t *testing.T) {
	start := time.Now()
	sb, srv := newServer(t)
	ctx := browser(t)

	const toggle = `tr[data-feature="recommend"] input.toggle`
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	if err := signIn(ctx, operatorToken); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(toggle)),
		chromedp.WaitVisible(chromedp.CSS("#live.on")), // the event stream is up
		chromedp.SendKeys(chromedp.CSS("#reason"), "browser test 浏览器"),
		chromedp.Click(chromedp.CSS(toggle)),
	); err != nil {
		t.Fatal(err)
	}

	// The click reached the switchboard.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := sb.Status("recommend")
		if err != nil {
			t.Fatal(err)
		}
		if st.State.Mode == degrade.Off && st.Source == degrade.SourceManual {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the switch did not turn recommend off: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The page shows the audit entry and the new state.
	const entry = `#audit tr.audit-entry[data-feature="recommend"][data-action="set"]`
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(entry)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-feature="recommend"][data-source="manual"]`)),
	); err != nil {
		t.Fatal(err)
	}
	row := text(t, ctx, entry)
	for _, want := range []string{"alice", "browser test 浏览器", "关 Off"} {
		if !strings.Contains(row, want) {
			t.Errorf("audit row %q lacks %q", row, want)
		}
	}
	if eval[bool](t, ctx, `document.querySelector('tr[data-feature="recommend"] input.toggle').checked`) {
		t.Error("the switch is still shown on")
	}

	// A change made elsewhere appears without a reload: the event stream
	// brings it well before the 15-second re-read.
	if err := sb.Set(context.Background(), "reviews", degrade.State{Mode: degrade.On}, degrade.Change{By: "bob", Reason: "api"}); err != nil {
		t.Fatal(err)
	}
	fast, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := chromedp.Do(fast, chromedp.WaitVisible(chromedp.CSS(`tr[data-feature="reviews"][data-mode="on"]`))); err != nil {
		t.Fatalf("the page did not follow a change made through the API: %v", err)
	}

	// Data is text, never markup.
	pwned := eval[bool](t, ctx, `window.pwned === 1`)
	elems := eval[int](t, ctx, `document.querySelectorAll('tr[data-feature="xss"] img, tr[data-feature="xss"] b').length`)
	desc := text(t, ctx, `tr[data-feature="xss"] td`)
	if pwned || elems > 0 || !strings.Contains(desc, "<b>bold</b>") {
		t.Errorf("the console rendered data as HTML: pwned %v, %d elements, text %q", pwned, elems, desc)
	}
	t.Logf("browser test took %v", time.Since(start).Round(time.Millisecond))
}

func TestConsoleViewerCannotChange(t *testing.T) {
	sb, srv := newServer(t)
	ctx := browser(t)
	const toggle = `tr[data-feature="recommend"] input.toggle`
	if err := chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/")); err != nil {
		t.Fatal(err)
	}
	if err := signIn(ctx, viewerToken); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(toggle))); err != nil {
		t.Fatal(err)
	}
	who := text(t, ctx, "#whoami")
	disabled := eval[bool](t, ctx, `document.querySelector('tr[data-feature="recommend"] input.toggle').disabled`)
	if !disabled || !strings.Contains(who, "victor") {
		t.Errorf("viewer %q: switch disabled %v", who, disabled)
	}
	if st, _ := sb.Status("recommend"); st.Source != degrade.SourceDefault {
		t.Errorf("state changed: %+v", st)
	}

	// A wrong token is refused with a message, and no data shows.
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#signout"))); err != nil {
		t.Fatal(err)
	}
	if err := signIn(ctx, "not-the-right-token-at-all"); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS("#message.error"))); err != nil {
		t.Fatal(err)
	}
	msg := text(t, ctx, "#message")
	rows := eval[int](t, ctx, `document.querySelectorAll('tr[data-feature]').length`)
	if !strings.Contains(msg, "令牌无效") || rows != 0 {
		t.Errorf("after a wrong token: message %q, %d feature rows", msg, rows)
	}
}
