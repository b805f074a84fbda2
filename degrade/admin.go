package degrade

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
)

// Role is what an authenticated [Principal] may do through the admin
// handler ([NewAdminHandler]).
type Role int8

// Roles, from the least to the most powerful.
const (
	// Viewer may read features, the audit trail and the event stream.
	Viewer Role = 1
	// Operator may also set and unpin features, shed and restore.
	Operator Role = 2
)

func (r Role) String() string {
	switch r {
	case Viewer:
		return "viewer"
	case Operator:
		return "operator"
	}
	return fmt.Sprintf("Role(%d)", int8(r))
}

// MarshalText writes the role's name.
func (r Role) MarshalText() ([]byte, error) {
	if r != Viewer && r != Operator {
		return nil, configError("Role", "is not viewer or operator", int8(r))
	}
	return []byte(r.String()), nil
}

// UnmarshalText reads "viewer" or "operator", so tokens can come from a
// configuration file.
func (r *Role) UnmarshalText(b []byte) error {
	switch string(b) {
	case "viewer":
		*r = Viewer
	case "operator":
		*r = Operator
	default:
		return configError("role", "is not viewer or operator", string(b))
	}
	return nil
}

// Principal is who made an admin request. Name is written into the audit
// trail as [Change].By.
type Principal struct {
	Name string `json:"name"`
	Role Role   `json:"role"`
}

// Errors of admin authentication. An authenticator given to
// [WithAuthenticator] returns them (or errors wrapping them) to choose the
// answer.
var (
	// ErrUnauthenticated means the request carries no credentials, or
	// ones that are not valid: 401 with WWW-Authenticate: Bearer. An
	// authenticator's error that matches none of the package's sentinels
	// is treated the same way.
	ErrUnauthenticated = errors.New("degrade: not authenticated")
	// ErrForbidden means the principal is known but may not do what the
	// request asks: 403.
	ErrForbidden = errors.New("degrade: forbidden")
)

var (
	errNoCredentials = fmt.Errorf("%w: send Authorization: Bearer <token>", ErrUnauthenticated)
	errBadToken      = fmt.Errorf("%w: the bearer token is not valid", ErrUnauthenticated)
	errNotAccepted   = fmt.Errorf("%w: the credentials are not valid", ErrUnauthenticated)
)

// minTokenLen is the shortest bearer token accepted: an admin token is a
// random secret, not a password a person types.
const minTokenLen = 16

// maxBody bounds a request body: the largest legitimate one is a state
// with a few rules and messages.
const maxBody = 64 << 10

// Audit page sizes of GET api/audit.
const (
	defaultAuditPage = 100
	maxAuditPage     = 1000
)

// heartbeat is how often the event stream writes a comment, so proxies
// keep it open and a client notices a dead connection.
const heartbeat = 20 * time.Second

// AdminOption configures the handler of [NewAdminHandler].
type AdminOption interface{ applyAdmin(*adminConfig) }

type adminOptionFunc func(*adminConfig)

func (f adminOptionFunc) applyAdmin(c *adminConfig) { f(c) }

type adminConfig struct {
	prefix  string
	tokens  map[string]Principal
	auths   []func(*http.Request) (Principal, error)
	cop     *http.CrossOriginProtection
	console bool
	err     error // the first invalid option
}

func (c *adminConfig) fail(err error) {
	if c.err == nil {
		c.err = err
	}
}

// WithTokens adds bearer tokens, each standing for a principal: the
// principal's Name goes into the audit trail, its Role says what the
// token may do. A token must be at least 16 characters of printable ASCII
// without spaces: use a random secret (32 bytes from crypto/rand, in
// hex). Tokens are compared in constant time, with every configured
// token. There are none by default.
func WithTokens(tokens map[string]Principal) AdminOption {
	return adminOptionFunc(func(c *adminConfig) {
		if c.tokens == nil {
			c.tokens = make(map[string]Principal, len(tokens))
		}
		for tok, p := range tokens {
			c.tokens[tok] = p
		}
	})
}

// WithAuthenticator adds a function that authenticates a request some
// other way: a session cookie, a header set by an SSO gateway, a client
// certificate. It returns the principal, or an error: one matching
// [ErrForbidden] answers 403, [ErrUnavailable] 503, anything else 401.
// Bearer tokens ([WithTokens]) are tried first, then the authenticators in
// the order given; the first that accepts the request wins.
//
// An authenticator that trusts cookies relies on the handler's
// cross-origin protection ([WithCrossOriginProtection]) against CSRF.
func WithAuthenticator(auth func(*http.Request) (Principal, error)) AdminOption {
	return adminOptionFunc(func(c *adminConfig) {
		if auth == nil {
			c.fail(configError("WithAuthenticator", "must not be nil", nil))
			return
		}
		c.auths = append(c.auths, auth)
	})
}

// WithMountPrefix sets the path the handler is mounted at, such as
// "/admin/degrade/": the API is then at /admin/degrade/api/... and the
// console at /admin/degrade/. Register the handler with the same pattern
// (mux.Handle("/admin/degrade/", h)). The default is "/", for a handler
// given the whole path space or mounted with [http.StripPrefix].
func WithMountPrefix(prefix string) AdminOption {
	return adminOptionFunc(func(c *adminConfig) { c.prefix = prefix })
}

// WithCrossOriginProtection sets the protection that refuses cross-origin
// browser requests that change state (CSRF), to trust other origins or
// set the deny handler; the handler uses p as given. The default is
// [http.NewCrossOriginProtection] answering a JSON 403. It wraps the whole
// handler; safe methods (GET, HEAD, OPTIONS) pass.
func WithCrossOriginProtection(p *http.CrossOriginProtection) AdminOption {
	return adminOptionFunc(func(c *adminConfig) {
		if p == nil {
			c.fail(configError("WithCrossOriginProtection", "must not be nil", nil))
			return
		}
		c.cop = p
	})
}

// WithConsole sets whether the handler serves the web console at its
// root. The default is true; without it only the JSON API is served.
func WithConsole(on bool) AdminOption {
	return adminOptionFunc(func(c *adminConfig) { c.console = on })
}

// NewAdminHandler returns an [http.Handler] for operators: a JSON API to
// see and change the switchboard's features, and a web console built on
// it. Every API request is authenticated ([WithTokens],
// [WithAuthenticator]); without either NewAdminHandler returns an error,
// so the handler is never open. Viewers may read; operators may also
// change. Serve it over TLS: bearer tokens are secrets.
//
// Routes, under the mount prefix ([WithMountPrefix], default "/"):
//
//	GET    api/me               the principal: {"name","role"}
//	GET    api/features         {"features":[...],"shed":"none","store_healthy":true}
//	GET    api/features/{name}  one feature
//	PUT    api/features/{name}  {"state":{"mode":"percent","percent":20},"reason":"..."} (operator)
//	DELETE api/features/{name}  unpin; optional body {"reason":"..."} (operator)
//	POST   api/shed             {"level":"optional"|"important","reason":"..."} (operator)
//	POST   api/restore          {"reason":"..."} (operator)
//	GET    api/audit?n=100      {"entries":[...]}, newest first, n at most 1000
//	GET    api/events           Server-Sent Events: "change" for each change of a
//	                            feature's effective state, "resync" when some were dropped
//	GET    (the prefix)         the console, with app.js and style.css beside it
//	                            (no credentials needed: it holds no data)
//
// A feature is {"name","level","description","default","messages","state",
// "source","trigger","changed"}: source says why it is in its state
// (manual, shed, trigger or default) and trigger names the trigger holding
// it off, if any. Changes answer with the feature, or for shed and restore
// with the list. Errors are {"error":"code","message":"..."}: 400 for a
// body that is not the JSON asked for or a state that is not valid, 401
// without valid credentials, 403 for a viewer's change or a cross-origin
// browser request, 404 for an unknown feature, 413 for a body over 64 KiB,
// 415 for a body that is not JSON, 503 when the store cannot be reached.
//
// The event stream ends when its request's context ends or the
// switchboard closes. [http.Server.Shutdown] does not cancel a request's
// context: close the switchboard first, or cancel the server's
// BaseContext from RegisterOnShutdown.
func NewAdminHandler(sb *Switchboard, opts ...AdminOption) (http.Handler, error) {
	c := adminConfig{prefix: "/", console: true}
	for _, o := range opts {
		o.applyAdmin(&c)
	}
	if c.err != nil {
		return nil, c.err
	}
	if sb == nil {
		return nil, configError("NewAdminHandler: sb", "must not be nil", nil)
	}
	if len(c.tokens) == 0 && len(c.auths) == 0 {
		return nil, fmt.Errorf("%w: WithTokens or WithAuthenticator must be given: the admin handler is never open", ErrInvalidConfig)
	}
	prefix, err := mountPrefix(c.prefix)
	if err != nil {
		return nil, err
	}
	a := &admin{sb: sb}
	if len(c.tokens) > 0 {
		ta, err := newTokenAuth(c.tokens)
		if err != nil {
			return nil, err
		}
		a.auths = append(a.auths, ta.authenticate)
	}
	a.auths = append(a.auths, c.auths...)

	mux := http.NewServeMux()
	route := func(pattern string, need Role, h func(http.ResponseWriter, *http.Request, Principal)) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.Handle(method+" "+prefix+path, a.guard(need, h))
	}
	route("GET api/me", Viewer, a.me)
	route("GET api/features", Viewer, a.list)
	route("GET api/features/{name}", Viewer, a.get)
	route("PUT api/features/{name}", Operator, a.set)
	route("DELETE api/features/{name}", Operator, a.unpin)
	route("POST api/shed", Operator, a.shed)
	route("POST api/restore", Operator, a.restore)
	route("GET api/audit", Viewer, a.audit)
	route("GET api/events", Viewer, a.events)
	if c.console {
		if err := serveConsole(mux, prefix); err != nil {
			return nil, err
		}
	}

	cop := c.cop
	if cop == nil {
		cop = http.NewCrossOriginProtection()
		cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, &adminError{http.StatusForbidden, "cross_origin",
				"cross-origin request refused: changes are accepted only from the console's own origin or from non-browser clients"})
		}))
	}
	return cop.Handler(mux), nil
}

// mountPrefix checks p and gives it a trailing slash.
func mountPrefix(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", configError("WithMountPrefix", `must start with "/"`, strconv.Quote(p))
	}
	// Plain characters only: the prefix becomes part of ServeMux
	// patterns, which panic on what they cannot parse.
	plain := func(r rune) bool {
		return r < 0x80 && (r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/-._~", r))
	}
	if strings.IndexFunc(p, func(r rune) bool { return !plain(r) }) >= 0 || strings.Contains(p, "//") {
		return "", configError("WithMountPrefix", "must be a plain path (letters, digits, /, -, ., _ and ~; no //)", strconv.Quote(p))
	}
	if !strings.HasSuffix(p, "/") {
		p += "/"
	}
	return p, nil
}

// tokenAuth authenticates bearer tokens. It keeps their SHA-256 sums, so
// every comparison is of 32 bytes whatever the length of the token sent.
type tokenAuth struct {
	sums       [][sha256.Size]byte
	principals []Principal
}

func newTokenAuth(tokens map[string]Principal) (*tokenAuth, error) {
	// Check in a fixed order, so the error is the same on every run.
	keys := make([]string, 0, len(tokens))
	for k := range tokens {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	t := &tokenAuth{}
	for i, tok := range keys {
		p := tokens[tok]
		// The error names the principal, never the token: it is a secret.
		field := fmt.Sprintf("WithTokens[%d] (%q)", i, p.Name)
		switch {
		case p.Name == "":
			return nil, configError(fmt.Sprintf("WithTokens[%d]: Name", i), "must not be empty (it is the audit trail's who)", `""`)
		case p.Role != Viewer && p.Role != Operator:
			return nil, configError(field+": Role", "must be Viewer or Operator", p.Role)
		case len(tok) < minTokenLen:
			return nil, configError(field+": token", fmt.Sprintf("must be at least %d characters", minTokenLen), fmt.Sprintf("%d characters", len(tok)))
		case strings.IndexFunc(tok, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0:
			return nil, configError(field+": token", "must be printable ASCII without spaces", "another character")
		}
		t.sums = append(t.sums, sha256.Sum256([]byte(tok)))
		t.principals = append(t.principals, p)
	}
	return t, nil
}

func (t *tokenAuth) authenticate(r *http.Request) (Principal, error) {
	tok, ok := bearerToken(r)
	if !ok {
		return Principal{}, errNoCredentials
	}
	sum := sha256.Sum256([]byte(tok))
	// Compare with every token without stopping at a match, so the time
	// taken says nothing about which token, if any, matched.
	match := -1
	for i := range t.sums {
		match = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(sum[:], t.sums[i][:]), i, match)
	}
	if match < 0 {
		return Principal{}, errBadToken
	}
	return t.principals[match], nil
}

// bearerToken returns the token of an "Authorization: Bearer" header.
func bearerToken(r *http.Request) (string, bool) {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

type admin struct {
	sb    *Switchboard
	auths []func(*http.Request) (Principal, error)
}

// authenticate asks each authenticator in turn; the first that accepts
// the request wins. A refusal that is not "no valid credentials" ends the
// search at once.
func (a *admin) authenticate(r *http.Request) (Principal, error) {
	var err error = errNoCredentials
	for _, auth := range a.auths {
		p, e := auth(r)
		if e == nil {
			return p, nil
		}
		if errors.Is(e, ErrForbidden) || errors.Is(e, ErrUnavailable) {
			return Principal{}, e
		}
		if !errors.Is(e, ErrUnauthenticated) {
			// Its text may say more than a stranger should learn.
			e = errNotAccepted
		}
		// Keep the most telling refusal: a bad token over anything else.
		if !errors.Is(err, errBadToken) {
			err = e
		}
	}
	return Principal{}, err
}

// guard authenticates the request and checks the principal's role before
// h runs.
func (a *admin) guard(need Role, h func(http.ResponseWriter, *http.Request, Principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		p, err := a.authenticate(r)
		switch {
		case err != nil:
			writeError(w, err)
			return
		case p.Name == "":
			otel.Handle(errors.New("degrade: an admin authenticator returned a principal without a name"))
			writeError(w, &adminError{http.StatusInternalServerError, "internal", "the authenticator returned a principal without a name"})
			return
		case p.Role != Viewer && p.Role != Operator:
			writeError(w, fmt.Errorf("%w: %s has no role", ErrForbidden, p.Name))
			return
		case p.Role < need:
			writeError(w, fmt.Errorf("%w: %s is a %s; this needs an %s", ErrForbidden, p.Name, p.Role, need))
			return
		}
		h(w, r, p)
	})
}

// featureView is a feature as the API shows it.
type featureView struct {
	Name        string            `json:"name"`
	Level       Level             `json:"level"`
	Description string            `json:"description,omitempty"`
	Default     Mode              `json:"default"`
	Messages    map[string]string `json:"messages,omitempty"`
	State       State             `json:"state"`
	Source      Source            `json:"source"`
	Trigger     string            `json:"trigger,omitempty"`
	Changed     time.Time         `json:"changed,omitzero"`
}

func viewOf(s Status) featureView {
	def := On
	if s.Feature.Off {
		def = Off
	}
	return featureView{
		Name: s.Name, Level: s.Level, Description: s.Feature.Description, Default: def,
		Messages: s.Feature.Messages, State: s.State, Source: s.Source, Trigger: s.Trigger, Changed: s.Changed,
	}
}

type overview struct {
	Features     []featureView `json:"features"`
	Shed         Level         `json:"shed"`
	StoreHealthy bool          `json:"store_healthy"`
}

func (a *admin) overview() overview {
	sts := a.sb.Features()
	o := overview{Features: make([]featureView, len(sts)), Shed: a.sb.Shedding(), StoreHealthy: a.sb.StoreHealthy()}
	for i, s := range sts {
		o.Features[i] = viewOf(s)
	}
	return o
}

func (a *admin) me(w http.ResponseWriter, _ *http.Request, p Principal) {
	writeJSON(w, http.StatusOK, p)
}

func (a *admin) list(w http.ResponseWriter, _ *http.Request, _ Principal) {
	writeJSON(w, http.StatusOK, a.overview())
}

func (a *admin) get(w http.ResponseWriter, r *http.Request, _ Principal) {
	st, err := a.sb.Status(r.PathValue("name"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, viewOf(st))
}

func (a *admin) set(w http.ResponseWriter, r *http.Request, p Principal) {
	name := r.PathValue("name")
	if _, err := a.sb.Status(name); err != nil {
		writeError(w, err)
		return
	}
	var body struct {
		State  *State `json:"state"`
		Reason string `json:"reason"`
	}
	if err := decodeBody(w, r, &body, true); err != nil {
		writeError(w, err)
		return
	}
	if body.State == nil {
		writeError(w, badRequest(`the body must hold "state", such as {"state":{"mode":"off"},"reason":"..."}`))
		return
	}
	if err := a.sb.Set(r.Context(), name, *body.State, Change{By: p.Name, Reason: body.Reason}); err != nil {
		writeError(w, err)
		return
	}
	a.get(w, r, p)
}

func (a *admin) unpin(w http.ResponseWriter, r *http.Request, p Principal) {
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeBody(w, r, &body, false); err != nil {
		writeError(w, err)
		return
	}
	if err := a.sb.Unpin(r.Context(), r.PathValue("name"), Change{By: p.Name, Reason: body.Reason}); err != nil {
		writeError(w, err)
		return
	}
	a.get(w, r, p)
}

func (a *admin) shed(w http.ResponseWriter, r *http.Request, p Principal) {
	var body struct {
		Level  Level  `json:"level"`
		Reason string `json:"reason"`
	}
	if err := decodeBody(w, r, &body, true); err != nil {
		writeError(w, err)
		return
	}
	if body.Level == 0 {
		writeError(w, badRequest(`the body must hold "level": "optional" or "important"`))
		return
	}
	if err := a.sb.Shed(r.Context(), body.Level, Change{By: p.Name, Reason: body.Reason}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.overview())
}

func (a *admin) restore(w http.ResponseWriter, r *http.Request, p Principal) {
	var body struct {
		Reason string `json:"reason"`
	}
	if err := decodeBody(w, r, &body, false); err != nil {
		writeError(w, err)
		return
	}
	if err := a.sb.Restore(r.Context(), Change{By: p.Name, Reason: body.Reason}); err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, a.overview())
}

func (a *admin) audit(w http.ResponseWriter, r *http.Request, _ Principal) {
	n := defaultAuditPage
	if v := r.URL.Query().Get("n"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			writeError(w, badRequest(fmt.Sprintf("n must be a whole number of at least 1 (at most %d entries come back), got %q", maxAuditPage, v)))
			return
		}
		n = min(n, maxAuditPage)
	}
	entries, err := a.sb.Audit(r.Context(), n)
	if err != nil {
		writeError(w, err)
		return
	}
	if entries == nil {
		entries = []AuditEntry{}
	}
	writeJSON(w, http.StatusOK, struct {
		Entries []AuditEntry `json:"entries"`
	}{entries})
}

// events streams changes of effective state as Server-Sent Events until
// the request's context ends or the switchboard closes.
func (a *admin) events(w http.ResponseWriter, r *http.Request, _ Principal) {
	rc := http.NewResponseController(w)
	// A stream outlives the server's WriteTimeout; not every writer can
	// lift it, and the heartbeat copes either way.
	_ = rc.SetWriteDeadline(time.Time{})

	// The listener runs on the switchboard's delivery goroutine and may
	// be called once more after stop: it only ever tries a send on a
	// channel that is never closed.
	ch := make(chan Event, 64)
	var dropped atomic.Bool
	stop := a.sb.Subscribe(func(e Event) {
		select {
		case ch <- e:
		default:
			dropped.Store(true)
		}
	})
	defer stop()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.WriteString(w, ": connected\n\n"); err != nil {
		return
	}
	if rc.Flush() != nil {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	var buf bytes.Buffer
	for {
		buf.Reset()
		select {
		case <-r.Context().Done():
			return
		case <-a.sb.stop:
			return
		case <-tick.C:
			buf.WriteString(": ping\n\n")
		case e := <-ch:
			data, err := json.Marshal(struct {
				Feature string      `json:"feature"`
				Before  featureView `json:"before"`
				After   featureView `json:"after"`
			}{e.Feature, viewOf(e.Before), viewOf(e.After)})
			if err != nil {
				otel.Handle(fmt.Errorf("degrade: admin event stream: %w", err))
				continue
			}
			buf.WriteString("event: change\ndata: ")
			buf.Write(data)
			buf.WriteString("\n\n")
			if dropped.Swap(false) {
				buf.WriteString("event: resync\ndata: {}\n\n")
			}
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return
		}
		if rc.Flush() != nil {
			return
		}
	}
}

// decodeBody reads a JSON object into v, strictly: unknown fields, a
// second value or a body that is not JSON are errors that say which.
// Without required, an empty body leaves v as it is.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, required bool) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return &adminError{http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("the body is larger than %d KiB", maxBody>>10)}
		}
		return badRequest("cannot read the body: " + err.Error())
	}
	if len(bytes.TrimSpace(b)) == 0 {
		if required {
			return badRequest("the body is empty; send a JSON object")
		}
		return nil
	}
	// Forms and no-cors fetches (a CSRF's tools) cannot send
	// application/json without a preflight; refuse every other body, even
	// one without a Content-Type, even if the cross-origin check was
	// configured away.
	ct := r.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
		return &adminError{http.StatusUnsupportedMediaType, "unsupported_media_type",
			fmt.Sprintf("Content-Type must be application/json, got %q", ct)}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if dec.More() {
		return badRequest("the body holds more than one JSON value")
	}
	// More is false at a '}' or ']' as well as at the end: only JSON
	// whitespace may follow the value.
	if off := dec.InputOffset(); len(bytes.TrimLeft(b[off:], " \t\r\n")) > 0 {
		return badRequest(fmt.Sprintf("the body is not valid JSON: it goes on after its value (at byte %d)", off))
	}
	return nil
}

// jsonError explains a decoding error in terms of the body.
func jsonError(err error) error {
	if errors.Is(err, ErrInvalidConfig) {
		return err // a level or role by a name that is not one
	}
	if e, ok := errors.AsType[*json.SyntaxError](err); ok {
		return badRequest(fmt.Sprintf("the body is not valid JSON: %v (at byte %d)", e, e.Offset))
	}
	if e, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		if e.Field == "" {
			return badRequest(fmt.Sprintf("the body must be a JSON object, not a JSON %s", e.Value))
		}
		return badRequest(fmt.Sprintf("field %q must be %s, not a JSON %s", e.Field, jsonKind(e.Type.Kind().String()), e.Value))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return badRequest("the body is not valid JSON: it ends too soon")
	}
	if f, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return badRequest("the body has an unknown field " + f)
	}
	return badRequest("the body is not the JSON expected: " + err.Error())
}

func jsonKind(k string) string {
	switch k {
	case "string":
		return "a string"
	case "float64", "float32", "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "a number"
	case "bool":
		return "true or false"
	case "slice", "array":
		return "an array"
	case "map", "struct", "ptr":
		return "an object"
	}
	return "a " + k
}

// adminError is an error answered with a status and code of its own.
type adminError struct {
	status  int
	code    string
	message string
}

func (e *adminError) Error() string { return e.message }

func badRequest(msg string) error {
	return &adminError{http.StatusBadRequest, "bad_request", msg}
}

// writeError answers err as {"error":code,"message":...}.
func writeError(w http.ResponseWriter, err error) {
	status, code, msg := http.StatusInternalServerError, "internal", "internal error"
	if e, ok := errors.AsType[*adminError](err); ok {
		status, code, msg = e.status, e.code, e.message
	} else {
		switch {
		case errors.Is(err, ErrUnavailable):
			// First: a store failure may wrap the error it caused.
			status, code = http.StatusServiceUnavailable, "unavailable"
			w.Header().Set("Retry-After", "5")
		case errors.Is(err, ErrUnauthenticated):
			status, code = http.StatusUnauthorized, "unauthenticated"
			v := `Bearer realm="bulwark degrade"`
			if errors.Is(err, errBadToken) {
				v += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", v)
		case errors.Is(err, ErrForbidden):
			status, code = http.StatusForbidden, "forbidden"
		case errors.Is(err, ErrUnknownFeature):
			status, code = http.StatusNotFound, "unknown_feature"
		case errors.Is(err, ErrInvalidConfig):
			status, code = http.StatusBadRequest, "invalid"
		case errors.Is(err, ErrConflict):
			status, code = http.StatusConflict, "conflict"
		case errors.Is(err, ErrClosed):
			status, code = http.StatusServiceUnavailable, "closed"
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
			// The store was too slow, or the client left: nothing to report.
			status, code = http.StatusServiceUnavailable, "unavailable"
		default:
			// Say nothing about an error of unknown kind; report it.
			otel.Handle(fmt.Errorf("degrade: admin: %w", err))
		}
		if code != "internal" {
			msg = err.Error()
		}
	}
	writeJSON(w, status, struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{code, msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

//go:embed console
var consoleFS embed.FS

// consolePolicy lets the console load only its own files and talk only to
// its own origin, and keeps it out of frames (clickjacking).
const consolePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// serveConsole registers the console's files under prefix.
func serveConsole(mux *http.ServeMux, prefix string) error {
	files := []struct{ path, file, ctype string }{
		{"{$}", "index.html", "text/html; charset=utf-8"},
		{"app.js", "app.js", "text/javascript; charset=utf-8"},
		{"style.css", "style.css", "text/css; charset=utf-8"},
	}
	for _, f := range files {
		b, err := fs.ReadFile(consoleFS, "console/"+f.file)
		if err != nil {
			return fmt.Errorf("degrade: console file %s: %w", f.file, err)
		}
		sum := sha256.Sum256(b)
		etag := `"` + hex.EncodeToString(sum[:8]) + `"`
		ctype := f.ctype
		mux.HandleFunc("GET "+prefix+f.path, func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", ctype)
			h.Set("Content-Security-Policy", consolePolicy)
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("X-Frame-Options", "DENY")
			h.Set("Referrer-Policy", "no-referrer")
			h.Set("Cache-Control", "no-cache") // revalidate: a new release must show at once
			h.Set("ETag", etag)
			http.ServeContent(w, r, f.file, time.Time{}, bytes.NewReader(b))
		})
	}
	return nil
}
