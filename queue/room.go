package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
)

// Room is a waiting room: a fair line in front of something that can serve
// only so many users per second. Callers join the line and are admitted one
// at a time, in the order they joined, at the room's rate and, optionally,
// while fewer than a set number of admitted users are active.
//
// There are two ways to stand in line. [Room.Wait] holds the caller (and its
// connection) until it is admitted. [Room.Join] hands out a [Ticket] for
// clients that cannot hold a connection, such as a mini-program page: the
// client polls [Room.Status] until the ticket is admitted, and a ticket not
// polled within the ticket TTL expires so its place goes to the next.
//
// A Room is in-process by default. With [WithRedis] every instance of a
// service that uses the same room name shares one line.
//
// A Room is safe for concurrent use. Close it to stop its timers and
// background work.
type Room struct {
	name string
	cfg  roomConfig
	b    roomBackend
	tel  *roomTelemetry

	closed atomic.Bool
}

// Ticket is a place in a room's line, as last seen by the room.
type Ticket struct {
	// ID names the ticket in Status, Leave and Done. It is not guessable:
	// holding the ID is what entitles a client to the place.
	ID string
	// Number is the ticket's number in the room: tickets are numbered
	// from 1 in the order they joined, across every instance of a room in
	// Redis, and admitted in that order. Show it to the user (a deli
	// counter's number); unlike ID it entitles its holder to nothing.
	Number uint64
	// Position is the ticket's place in line: 1 is next. It is 0 once
	// the ticket is admitted.
	Position int
	// ETA is the estimated wait until admission, from the rate at which
	// the line has been moving lately (not only the configured rate).
	ETA time.Duration
	// Admitted reports whether the ticket's turn has come.
	Admitted bool
	// Token is the signed admission token, set once Admitted is true and
	// the room has a [Signer] ([WithSigner]).
	Token string
	// PollAfter is how long the client should wait before polling again.
	PollAfter time.Duration
	// ExpiresAt is when the ticket lapses if it is not polled again (for
	// an admitted ticket: when its admission lapses if not used).
	ExpiresAt time.Time
}

// Admission is the result of a successful [Room.Wait]. Call Done when the
// admitted work is finished, to free its slot in a room with a limit on
// active users ([WithMaxActive]). Done may be called more than once; only
// the first call counts.
type Admission struct {
	// Ticket is the ID of the ticket that was admitted.
	Ticket string
	// Waited is how long the caller stood in line.
	Waited time.Duration

	done *admissionDone
}

// admissionDone is shared by the copies of one Admission so that Done
// counts once.
type admissionDone struct {
	room  *Room
	id    string
	taken atomic.Bool
	held  any // backend-specific handle, so Done needs no lookup
}

// Done frees the admission's active slot. It is safe to call on a zero
// Admission and more than once.
func (a Admission) Done() {
	d := a.done
	if d == nil || !d.taken.CompareAndSwap(false, true) {
		return
	}
	d.room.b.release(d.id, d.held)
}

// RoomStats is a snapshot of a room.
type RoomStats struct {
	// Length is the number of tickets in line (not yet admitted).
	Length int
	// Active is the number of admissions not yet done or lapsed.
	Active int
	// Outflow is the measured admission rate per second while the line
	// was not empty, the basis of every ETA.
	Outflow float64
	// ETA is the estimated wait of a ticket joining now.
	ETA time.Duration
}

// roomBackend is where a room's line lives: this process, or Redis.
//
// join and wait implement Wait; join, status, leave and finish implement the
// ticket mode. Every method applies the room's rules (FIFO, rate, active
// limit, expiry) itself, so the two backends behave alike.
type roomBackend interface {
	// join appends a ticket. A held ticket belongs to a caller blocked in
	// Wait: it does not expire for want of polling, and await waits on it.
	// It fails with ErrFull, or with ErrWaitTooLong when the estimated
	// wait exceeds the maximum wait and the room rejects early; either
	// way nothing is left in line.
	join(ctx context.Context, held bool) (Ticket, any, error)
	// await blocks until the held ticket is admitted and returns the
	// admission's handle for release. When ctx ends first the ticket
	// leaves the line and ctx's error is returned; an admission that
	// came at the same moment is kept and returned, since its slot of
	// the rate cannot be given back.
	await(ctx context.Context, t Ticket, h any) (Ticket, any, error)
	// status refreshes a ticket's expiry and reports its place, admitting
	// it if its turn has come.
	status(ctx context.Context, id string) (Ticket, error)
	// leave gives up a ticket, in line or admitted.
	leave(ctx context.Context, id string) error
	// finish ends a ticket-mode admission, freeing its active slot.
	finish(ctx context.Context, id string) error
	// release ends an admission returned by await.
	release(id string, h any)
	// stats reports the line.
	stats(ctx context.Context) (RoomStats, error)
	close() error
}

// NewRoom returns a room that admits perSecond users per second. The name
// identifies the room in telemetry and, with [WithRedis], in Redis: rooms of
// the same name on the same Redis share one line.
func NewRoom(name string, perSecond float64, opts ...RoomOption) (*Room, error) {
	c := defaultRoomConfig()
	for _, o := range opts {
		o.applyRoom(&c)
	}
	if err := c.validate(name, perSecond); err != nil {
		return nil, err
	}
	c.rate = perSecond
	r := &Room{name: name, cfg: c}
	r.tel = newRoomTelemetry(c.meterProvider, name, c.client != nil)
	var err error
	if c.client != nil {
		r.b, err = newRedisRoom(r)
	} else {
		r.b = newLocalRoom(r)
	}
	if err != nil {
		return nil, err
	}
	r.tel.observe(r)
	return r, nil
}

// Name returns the room's name.
func (r *Room) Name() string { return r.name }

// Rate returns the configured admissions per second.
func (r *Room) Rate() float64 { return r.cfg.rate }

// Wait stands in line until the caller is admitted. It returns at once with
// ErrFull when the line is full, or with ErrWaitTooLong when the estimated
// wait already exceeds the maximum wait (unless [WithRejectTooLong] is
// false). It returns ErrWaitTimeout after the maximum wait, and ctx's error
// when ctx ends first; either way the caller's place goes to the next in
// line. An admission that came at the same moment as the end of ctx or of
// the maximum wait is returned rather than wasted (a Redis room waits at
// most a tenth of a second past the end to learn of one, and gives back one
// it learns of later). With [WithRedis], a Redis that cannot be reached
// gives an error matching ErrUnavailable.
// Call [Admission.Done] when the admitted work is finished.
func (r *Room) Wait(ctx context.Context) (Admission, error) {
	if r.closed.Load() {
		return Admission{}, ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return Admission{}, err
	}
	start := time.Now()
	t, h, err := r.b.join(ctx, true)
	if err != nil {
		r.tel.rejected(ctx, err)
		return Admission{}, err
	}
	r.tel.joined(ctx)
	if t.Admitted {
		// Admitted on joining: no wait, so no timer.
		t, h, err = r.b.await(ctx, t, h)
	} else {
		wctx, cancel := context.WithTimeoutCause(ctx, r.cfg.maxWait, ErrWaitTimeout)
		t, h, err = r.b.await(wctx, t, h)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), ErrWaitTimeout) {
			err = ErrWaitTimeout
		}
	}
	if err != nil {
		r.tel.rejected(ctx, err)
		return Admission{}, err
	}
	waited := time.Since(start)
	r.tel.admitted(ctx, waited)
	return Admission{
		Ticket: t.ID,
		Waited: waited,
		done:   &admissionDone{room: r, id: t.ID, held: h},
	}, nil
}

// Join takes a ticket for a client that will poll [Room.Status] instead of
// holding a connection. It fails at once with ErrFull or ErrWaitTooLong as
// Wait does. The ticket expires if it is not polled within the ticket TTL
// ([WithTicketTTL]).
func (r *Room) Join(ctx context.Context) (Ticket, error) {
	if r.closed.Load() {
		return Ticket{}, ErrClosed
	}
	t, _, err := r.b.join(ctx, false)
	if err != nil {
		r.tel.rejected(ctx, err)
		return Ticket{}, err
	}
	r.tel.joined(ctx)
	t.Number = ticketNumber(t.ID)
	return t, nil
}

// Status refreshes a ticket: it reports its place and estimated wait and
// keeps it from expiring for another ticket TTL. Once the ticket's turn has
// come, Admitted is true (with a token if the room has a [Signer]); the
// admission then lasts the admission TTL ([WithAdmissionTTL]) or until
// [Room.Done]. It fails with ErrTicketExpired for a ticket that is not in
// the room.
func (r *Room) Status(ctx context.Context, id string) (Ticket, error) {
	if r.closed.Load() {
		return Ticket{}, ErrClosed
	}
	t, err := r.b.status(ctx, id)
	t.Number = ticketNumber(t.ID)
	return t, err
}

// Leave gives up a ticket, whether in line or admitted; its place goes to
// the next. Leaving a ticket that is not in the room is not an error.
func (r *Room) Leave(ctx context.Context, id string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	return r.b.leave(ctx, id)
}

// Done ends the admission of a ticket from [Room.Join], freeing its active
// slot. Calling it for a ticket that is not admitted, or twice, is not an
// error.
func (r *Room) Done(ctx context.Context, id string) error {
	if r.closed.Load() {
		return ErrClosed
	}
	return r.b.finish(ctx, id)
}

// Stats reports the room's line.
func (r *Room) Stats(ctx context.Context) (RoomStats, error) {
	if r.closed.Load() {
		return RoomStats{}, ErrClosed
	}
	return r.b.stats(ctx)
}

// Signer returns the room's token signer, or nil.
func (r *Room) Signer() *Signer { return r.cfg.signer }

// Close stops the room's timers and background work. Callers blocked in
// Wait return ErrClosed. Close does not remove a Redis room's line: other
// instances keep it.
func (r *Room) Close() error {
	if !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	r.tel.unregister()
	return r.b.close()
}

// roomConfig holds a room's options.
type roomConfig struct {
	rate          float64
	maxActive     int
	maxLength     int
	maxWait       time.Duration
	rejectLong    bool
	ticketTTL     time.Duration
	admitTTL      time.Duration
	pollMin       time.Duration
	pollMax       time.Duration
	signer        *Signer
	client        redis.UniversalClient
	prefix        string
	refresh       time.Duration
	meterProvider metric.MeterProvider
}

// Defaults, each stated on its option.
const (
	defaultMaxLength = 100_000
	defaultMaxWait   = 10 * time.Minute
	defaultTicketTTL = 30 * time.Second
	defaultAdmitTTL  = 2 * time.Minute
	defaultPollMin   = time.Second
	defaultPollMax   = 10 * time.Second
	defaultPrefix    = "bulwark:queue:"
)

func defaultRoomConfig() roomConfig {
	return roomConfig{
		maxLength:  defaultMaxLength,
		maxWait:    defaultMaxWait,
		rejectLong: true,
		ticketTTL:  defaultTicketTTL,
		admitTTL:   defaultAdmitTTL,
		pollMin:    defaultPollMin,
		pollMax:    defaultPollMax,
		prefix:     defaultPrefix,
	}
}

func (c *roomConfig) validate(name string, rate float64) error {
	switch {
	case name == "":
		return configError("name", "must not be empty", `""`)
	case strings.ContainsAny(name, "{}"):
		return configError("name", "must not contain '{' or '}'", strconv.Quote(name))
	case !(rate > 0) || math.IsInf(rate, 0):
		return configError("perSecond", "must be positive and finite", rate)
	case rate > 1e6:
		return configError("perSecond", "must be at most 1e6", rate)
	case c.maxActive < 0:
		return configError("WithMaxActive", "must not be negative", c.maxActive)
	case c.maxLength < 1:
		return configError("WithMaxLength", "must be at least 1", c.maxLength)
	case c.maxWait <= 0:
		return configError("WithMaxWait", "must be positive", c.maxWait)
	case c.ticketTTL < time.Millisecond:
		return configError("WithTicketTTL", "must be at least 1ms", c.ticketTTL)
	case c.admitTTL < time.Millisecond:
		return configError("WithAdmissionTTL", "must be at least 1ms", c.admitTTL)
	case c.pollMin <= 0 || c.pollMax < c.pollMin:
		return configError("WithPollInterval", "must have 0 < min <= max", [2]time.Duration{c.pollMin, c.pollMax})
	case c.pollMax >= c.ticketTTL:
		return configError("WithPollInterval", "max must be shorter than the ticket TTL "+c.ticketTTL.String(), c.pollMax)
	case strings.ContainsAny(c.prefix, "{}"):
		return configError("WithKeyPrefix", "must not contain '{' or '}'", strconv.Quote(c.prefix))
	}
	return nil
}

// pollAfter is how long a client at ETA eta should wait before polling
// again: a tenth of the wait, within the configured bounds, so a client far
// back polls rarely and one near the front soon.
func (c *roomConfig) pollAfter(eta time.Duration) time.Duration {
	return min(max(eta/10, c.pollMin), c.pollMax)
}

// RoomOption configures a [Room].
type RoomOption interface{ applyRoom(*roomConfig) }

type roomOptionFunc func(*roomConfig)

func (f roomOptionFunc) applyRoom(c *roomConfig) { f(c) }

// WithMaxActive also limits admission by the number of admitted users not
// yet done ([Admission.Done], [Room.Done]) or lapsed: the head of the line
// waits while n are active. The default, 0, is no limit.
func WithMaxActive(n int) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.maxActive = n })
}

// WithMaxLength bounds the line: a caller who finds n tickets in line is
// refused at once with ErrFull. The default is 100 000.
func WithMaxLength(n int) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.maxLength = n })
}

// WithMaxWait sets how long Wait holds a caller before giving up with
// ErrWaitTimeout. The default is 10 minutes.
func WithMaxWait(d time.Duration) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.maxWait = d })
}

// WithRejectTooLong sets whether a caller whose estimated wait at joining
// already exceeds the maximum wait is refused at once with ErrWaitTooLong
// (true, the default) or let into the line anyway (false).
func WithRejectTooLong(reject bool) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.rejectLong = reject })
}

// WithTicketTTL sets how long a ticket from Join stays in line without
// being polled; after that it expires and its place goes to the next. An
// admitted ticket must also be polled within this time to claim its
// admission. The default is 30 seconds.
func WithTicketTTL(d time.Duration) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.ticketTTL = d })
}

// WithAdmissionTTL sets how long the admission of a polled ticket lasts
// before it lapses if [Room.Done] is not called; it bounds how long an
// abandoned admission holds an active slot. Make it at least the token TTL
// of the room's [Signer]. The default is 2 minutes.
func WithAdmissionTTL(d time.Duration) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.admitTTL = d })
}

// WithPollInterval bounds the PollAfter a ticket advises: a tenth of the
// estimated wait, but at least min and at most max. max must be shorter
// than the ticket TTL. The defaults are 1 and 10 seconds.
func WithPollInterval(min, max time.Duration) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.pollMin, c.pollMax = min, max })
}

// WithSigner makes the room sign an admission token for every admitted
// ticket from [Room.Join] ([Ticket.Token]), to be checked on the
// protected endpoint with [RequireAdmission]. The default is no tokens.
func WithSigner(s *Signer) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.signer = s })
}

// WithRedis keeps the room's line in Redis, shared by every room of the
// same name on the same Redis: a user who joined first on one instance is
// admitted before a later user on another. The default is a line in this
// process.
func WithRedis(client redis.UniversalClient) RoomOption {
	return roomOptionFunc(func(c *roomConfig) { c.client = client })
}

// ticketNumber reads the number a ticket ID begins with; 0 if it has none.
func ticketNumber(id string) uint64 {
	i := strings.IndexByte(id, '-')
	if i <= 0 {
		return 0
	}
	n, err := strconv.ParseUint(id[:i], 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// newTicketID returns the ID of ticket number seq: the number, which orders
// the line, and 64 random bits, which make the ID impossible to guess from
// the number.
func newTicketID(seq uint64) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	buf := make([]byte, 0, 20+1+16)
	buf = strconv.AppendUint(buf, seq, 10)
	buf = append(buf, '-')
	buf = hex.AppendEncode(buf, b[:])
	return string(buf)
}

// outflow measures how fast the line moves: admissions per second, with
// time counted only while the line was not empty, so a quiet spell does
// not read as a slow line. It is an exponentially weighted rate: each
// admission adds 1/tau and the sum decays with time constant tau.
type outflow struct {
	tau     float64 // seconds
	rate    float64 // per second, as of busy time at
	at      float64 // busy seconds at the last update
	busy    float64 // busy seconds so far
	last    int64   // ns of the last observation
	wasBusy bool
}

func newOutflow(rate float64) outflow {
	return outflow{tau: max(10, 20/rate), rate: rate}
}

// observe accounts the time since the last observation and records
// whether the line is busy from now on.
func (o *outflow) observe(now int64, busy bool) {
	if o.wasBusy && now > o.last {
		o.busy += float64(now-o.last) / 1e9
	}
	o.last = now
	o.wasBusy = busy
}

// admitted records one admission.
func (o *outflow) admitted() {
	o.rate = o.value() + 1/o.tau
	o.at = o.busy
}

// value is the measured rate now.
func (o *outflow) value() float64 {
	return o.rate * math.Exp(-(o.busy-o.at)/o.tau)
}

// etaFor estimates the wait of the ticket at position pos when the line
// moves at rate per second.
func etaFor(pos int, rate float64) time.Duration {
	if pos <= 0 {
		return 0
	}
	secs := float64(pos) / max(rate, 1e-9)
	if secs > maxETA.Seconds() {
		return maxETA
	}
	return time.Duration(secs * 1e9)
}

// maxETA caps estimates: beyond it a number means nothing to a user.
const maxETA = 24 * time.Hour
