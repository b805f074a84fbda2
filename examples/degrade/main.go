// Command degrade runs a food-delivery home page whose optional parts are
// behind Bulwark's switchboard, with a trigger on the reviews backend's
// error rate and the operator console, and first drives itself through an
// incident.
//
//	go run ./examples/degrade          # the incident, then serve with the console until Ctrl-C
//	go run ./examples/degrade -exit    # the incident only
//
// The console is at http://127.0.0.1:8080/admin/ (the operator token is
// printed at start). The self-drive shows: everything on; an operator
// turning map navigation off for one phone model on old app versions only;
// the reviews backend failing, a trigger turning reviews off by itself and
// back on once the backend has recovered; the noon sale shedding every
// optional feature with one call; and the audit trail of it all.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/bulwarkgo/bulwark/degrade"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "degrade:", err)
		os.Exit(1)
	}
}

var features = []degrade.Feature{
	{Name: "checkout", Level: degrade.Core, Description: "place and pay for an order"},
	{Name: "map-navigation", Level: degrade.Important, Description: "the rider's live position on a map",
		Messages: map[string]string{"zh": "地图导航暂时不可用", "en": "Map navigation is unavailable for now."}},
	{Name: "recommendations", Level: degrade.Optional, Description: "dishes you may like"},
	{Name: "reviews", Level: degrade.Optional, Description: "other customers' reviews",
		Messages: map[string]string{"zh": "评价暂时不可用", "en": "Reviews are unavailable for now."}},
}

// reviewsBackend stands for the reviews service: it fails while broken.
type reviewsBackend struct{ broken atomic.Bool }

func (b *reviewsBackend) fetch() error {
	if b.broken.Load() {
		return errors.New("reviews backend: connection reset")
	}
	return nil
}

// run serves until ctx is done, or with -exit until the self-drive ends.
func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("degrade", flag.ContinueOnError)
	fs.SetOutput(out)
	addr := fs.String("addr", "127.0.0.1:8080", "address to listen on")
	exit := fs.Bool("exit", false, "exit after the self-drive instead of serving until SIGINT/SIGTERM")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}

	// The reviews backend's error rate over the last second; a trigger
	// turns reviews off when more than half the calls failed for 300ms,
	// and back on once fewer than 10% have for 600ms.
	errRate, err := degrade.NewErrorRate(time.Second, 5)
	if err != nil {
		return err
	}
	sb, err := degrade.New(features,
		degrade.WithEvaluationInterval(50*time.Millisecond),
		degrade.WithTrigger(degrade.Trigger{
			Name: "reviews-errors", Signal: errRate,
			Above: 0.5, For: 300 * time.Millisecond,
			Below: 0.1, RecoverFor: 600 * time.Millisecond,
			Off: []string{"reviews"},
		}))
	if err != nil {
		return err
	}
	defer sb.Close()

	var tok [16]byte
	_, _ = rand.Read(tok[:])
	token := hex.EncodeToString(tok[:])
	admin, err := degrade.NewAdminHandler(sb,
		degrade.WithMountPrefix("/admin/"),
		degrade.WithTokens(map[string]degrade.Principal{token: {Name: "ops-alice", Role: degrade.Operator}}))
	if err != nil {
		return err
	}

	backend := &reviewsBackend{}
	mux := http.NewServeMux()
	mux.Handle("/admin/", admin)
	mux.Handle("GET /home", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		home(w, r, sb, backend, errRate)
	}))
	mux.Handle("GET /reviews", degrade.Guard(sb, "reviews", 30*time.Second)(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			err := backend.fetch()
			errRate.Record(err)
			if err != nil {
				http.Error(w, "reviews failed", http.StatusBadGateway)
				return
			}
			fmt.Fprintln(w, `{"reviews":["好吃","送得快"]}`)
		})))
	handler := degrade.WithRequestAttributes(degrade.HeaderAttributes)(mux)

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	base := "http://" + ln.Addr().String()
	fmt.Fprintf(out, "listening on %s/home\nconsole: %s/admin/ (operator token %s)\n", base, base, token)

	driveErr := drive(ctx, out, base, token, backend)
	if driveErr == nil && !*exit {
		fmt.Fprintf(out, "\nserving until SIGINT or SIGTERM; open %s/admin/ and paste the token\n", base)
		select {
		case <-ctx.Done():
		case err := <-served:
			return err
		}
	}
	fmt.Fprintln(out, "shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if driveErr != nil && ctx.Err() == nil {
		return driveErr
	}
	return nil
}

// home renders the home page: core parts always, the rest while on.
func home(w http.ResponseWriter, r *http.Request, sb *degrade.Switchboard, backend *reviewsBackend, errRate *degrade.ErrorRate) {
	ctx := r.Context()
	page := map[string]any{"shops": []string{"兰州拉面", "沙县小吃"}, "checkout": sb.Enabled(ctx, "checkout")}
	var notes []string
	for _, f := range []string{"map-navigation", "recommendations", "reviews"} {
		err := sb.Check(ctx, f)
		if err == nil && f == "reviews" {
			// The reviews part calls its backend; failures feed the
			// trigger.
			err = backend.fetch()
			errRate.Record(err)
		}
		var de *degrade.DegradedError
		switch {
		case errors.As(err, &de):
			notes = append(notes, de.Message)
		case err != nil:
			notes = append(notes, f+" failed")
		default:
			page[f] = true
		}
	}
	page["notes"] = notes
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(page)
}

// client is a phone calling the service.
type client struct {
	model, version, locale string
}

// drive plays the incident and prints what phones and operators see.
func drive(ctx context.Context, out io.Writer, base, token string, backend *reviewsBackend) error {
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	phones := []client{
		{"HUAWEI-P30", "2.2.1", "zh-CN"},
		{"iPhone15,2", "2.4.0", "en-US"},
	}
	show := func(step string) error {
		if !strings.HasPrefix(step, " ") {
			fmt.Fprintln(out)
		}
		fmt.Fprintln(out, step)
		for _, p := range phones {
			page, err := getHome(ctx, hc, base, p)
			if err != nil {
				return err
			}
			fmt.Fprintf(out, "   %-11s %s  %s\n", p.model, p.version, page)
		}
		return nil
	}
	admin := func(method, path, body string) error {
		req, err := http.NewRequestWithContext(ctx, method, base+"/admin/api/"+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(resp.Body)
			return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return nil
	}

	if err := show("1. a normal lunchtime: every part of the home page is on"); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n2. crash reports from HUAWEI-P30 before 2.3.0: the operator turns map navigation off for them only")
	if err := admin("PUT", "features/map-navigation", `{"state":{"mode":"on","rules":[{"when":[`+
		`{"attr":"model","op":"in","values":["HUAWEI-P30"]},{"attr":"app_version","op":"lt","values":["2.3.0"]}],`+
		`"enabled":false}]},"reason":"crash report #512"}`); err != nil {
		return err
	}
	if err := show("   after the change:"); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n3. the reviews backend starts failing; phones keep loading the home page")
	backend.broken.Store(true)
	if err := poll(ctx, out, hc, base, phones[1], "reviews", false); err != nil {
		return err
	}
	fmt.Fprintln(out, "   the backend is fixed; the trigger waits for the error rate to stay low")
	backend.broken.Store(false)
	if err := poll(ctx, out, hc, base, phones[1], "reviews", true); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n4. noon sale (大促模式): the operator sheds every optional feature with one call")
	if err := admin("POST", "shed", `{"level":"optional","reason":"noon flash sale"}`); err != nil {
		return err
	}
	if err := show("   during the sale:"); err != nil {
		return err
	}
	if err := admin("POST", "restore", `{"reason":"sale over"}`); err != nil {
		return err
	}
	if err := show("   after restore:"); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n5. the audit trail, newest first:")
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/admin/api/audit?n=10", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var trail struct {
		Entries []degrade.AuditEntry `json:"entries"`
	}
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &trail); err != nil {
		// The API may answer a bare list.
		if err2 := json.Unmarshal(body, &trail.Entries); err2 != nil {
			return fmt.Errorf("audit: %w: %s", err, body)
		}
	}
	for _, e := range trail.Entries {
		fmt.Fprintf(out, "   %-8s %-15s by %-10s %s\n", e.Action, e.Feature, e.By, e.Reason)
	}
	return nil
}

// poll loads the home page as p until feature is (or is not) on, printing
// each change it sees.
func poll(ctx context.Context, out io.Writer, hc *http.Client, base string, p client, feature string, want bool) error {
	start := time.Now()
	last := ""
	for {
		page, err := getHome(ctx, hc, base, p)
		if err != nil {
			return err
		}
		if page != last {
			fmt.Fprintf(out, "   +%-5s %-11s %s\n", time.Since(start).Round(50*time.Millisecond), p.model, page)
			last = page
		}
		if strings.Contains(page, feature) == want && !strings.Contains(page, feature+" failed") {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			return fmt.Errorf("%s did not turn %v within 10s", feature, want)
		}
		select {
		case <-time.After(25 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// getHome loads the home page as p and sums it up on one line.
func getHome(ctx context.Context, hc *http.Client, base string, p client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/home", nil)
	if err != nil {
		return "", err
	}
	req.Header.Set("X-Device-Model", p.model)
	req.Header.Set("X-App-Version", p.version)
	req.Header.Set("Accept-Language", p.locale)
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var page struct {
		MapNavigation   bool     `json:"map-navigation"`
		Recommendations bool     `json:"recommendations"`
		Reviews         bool     `json:"reviews"`
		Notes           []string `json:"notes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return "", err
	}
	var b bytes.Buffer
	for _, part := range []struct {
		name string
		on   bool
	}{{"map-navigation", page.MapNavigation}, {"recommendations", page.Recommendations}, {"reviews", page.Reviews}} {
		if part.on {
			b.WriteString(part.name + " ")
		}
	}
	if len(page.Notes) > 0 {
		b.WriteString("| " + strings.Join(page.Notes, "; "))
	}
	return strings.TrimSpace(b.String()), nil
}
