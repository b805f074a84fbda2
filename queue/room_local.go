package queue

import (
	"context"
	"sync"
	"time"
)

// Ticket states.
const (
	inLine = iota
	admitted
	gone
)

// entry is one ticket of a local room.
type entry struct {
	id      string
	joined  int64 // ns since the room's epoch
	expires int64 // ticket mode: deadline of the next poll, then of the admission
	idx     int   // slot in the line
	state   uint8
	held    bool          // a caller blocked in Wait owns it
	claimed bool          // ticket mode: Status has seen the admission
	ch      chan struct{} // held: closed on admission or when the room closes
	token   string
}

// localRoom keeps the line in this process. One mutex guards everything;
// no user code and no telemetry runs under it. A timer fires at the next
// admission instant while someone is in line, so admissions happen on time
// whether or not anyone polls.
//
// Admission follows a theoretical admission time (tat): the head of the
// line is admitted at max(tat, when it joined), and tat then moves one
// interval on. A late timer therefore admits everyone whose instant has
// passed, keeping the rate exact over time, and an idle room banks no
// admissions for later (a burst of at most one).
type localRoom struct {
	r          *Room
	epoch      time.Time
	interval   int64 // ns between admissions
	sweepEvery int64

	mu        sync.Mutex
	line      line
	tickets   map[string]*entry // ticket mode, in line or admitted
	active    int
	tat       int64
	seq       uint64
	timer     *time.Timer
	timerAt   int64           // when the timer is set to fire; -1 when stopped
	sleeper   *preciseSleeper // nil: timers alone
	early     bool            // the timer fires preciseLead before timerAt
	exact     bool            // the next timer fires on time: a precise sleep fell short
	closed    bool
	est       outflow
	nextSweep int64
	// lost counts tickets that expired since telemetry last took them.
	lostExpired int
}

func newLocalRoom(r *Room) *localRoom {
	l := &localRoom{
		r:          r,
		epoch:      time.Now(),
		interval:   max(int64(1e9/r.cfg.rate), 1),
		sweepEvery: max(int64(min(r.cfg.ticketTTL, r.cfg.admitTTL)/4), int64(time.Millisecond)),
		tickets:    make(map[string]*entry),
		est:        newOutflow(r.cfg.rate),
		timerAt:    -1,
	}
	if l.interval < preciseBelow {
		l.sleeper = newPreciseSleeper()
	}
	l.timer = time.AfterFunc(time.Hour, l.tick)
	l.timer.Stop()
	return l
}

func (l *localRoom) now() int64 { return int64(time.Since(l.epoch)) }

func (l *localRoom) at(ns int64) time.Time { return l.epoch.Add(time.Duration(ns)) }

// tick is the timer's function.
func (l *localRoom) tick() {
	l.mu.Lock()
	l.timerAt = -1
	if l.early && !l.closed {
		// The timer was set to fire a little before the admission
		// instant; sleep the rest precisely (see sleepPrecise).
		now := l.now()
		if due := l.nextAt(now); due > now {
			l.mu.Unlock()
			l.sleeper.sleep(time.Duration(due - now))
			l.mu.Lock()
			// A sleep that did not get there (another was under
			// way, or a test's fake clock does not move during it)
			// falls back on the timer.
			l.exact = l.now() < due
		}
	}
	if !l.closed {
		l.advance(l.now())
	}
	n := l.takeLost()
	l.mu.Unlock()
	l.r.tel.lost(context.Background(), reasonExpired, n)
}

// takeLost returns and clears the count of expired tickets. l.mu is held.
func (l *localRoom) takeLost() int {
	n := l.lostExpired
	l.lostExpired = 0
	return n
}

// advance admits everyone whose turn has come by now, drops expired
// tickets, and sets the timer for the next admission. l.mu is held.
func (l *localRoom) advance(now int64) {
	if now >= l.nextSweep {
		l.sweep(now)
	}
	l.est.observe(now, l.line.len() > 0)
	cfg := &l.r.cfg
	for {
		e := l.line.front()
		if e == nil {
			break
		}
		if !e.held && e.expires <= now {
			l.line.remove(e)
			l.drop(e, now)
			l.lostExpired++
			continue
		}
		if cfg.maxActive > 0 && l.active >= cfg.maxActive {
			break
		}
		slot := max(l.tat, e.joined)
		if slot > now {
			break
		}
		l.line.remove(e)
		e.state = admitted
		l.active++
		l.tat = slot + l.interval
		l.est.admitted()
		if e.held {
			close(e.ch)
		} else {
			// The admission must be claimed by a poll within a
			// ticket TTL, or it lapses and frees its slot.
			e.expires = now + int64(cfg.ticketTTL)
		}
	}
	l.est.observe(now, l.line.len() > 0)
	l.schedule(now)
}

// schedule sets the timer for the next moment advance has work. l.mu is
// held.
func (l *localRoom) schedule(now int64) {
	next := l.nextAt(now)
	if next == l.timerAt {
		return
	}
	l.timerAt = next
	if next < 0 {
		l.timer.Stop()
		return
	}
	d := next - now
	// Go's timers may fire up to a millisecond late, which is the whole
	// gap between admissions at 1000/s. For short intervals the timer
	// fires early and tick sleeps the rest precisely, so admissions stay
	// evenly spaced.
	l.early = !l.exact && l.sleeper != nil && d > 0
	l.exact = false
	if l.early {
		d = max(d-preciseLead, 0)
	}
	l.timer.Reset(time.Duration(d))
}

// nextAt returns when advance next has work, or -1. l.mu is held.
func (l *localRoom) nextAt(now int64) int64 {
	e := l.line.front()
	switch {
	case e == nil:
		return -1
	case l.r.cfg.maxActive == 0 || l.active < l.r.cfg.maxActive:
		return max(l.tat, e.joined, now)
	case len(l.tickets) > 0:
		// Blocked on active slots: Done calls advance, and a sweep
		// frees lapsed ticket admissions.
		return max(l.nextSweep, now)
	}
	return -1
}

// Precise timing applies to rooms admitting more often than every
// preciseBelow; their timer fires preciseLead early.
const (
	preciseBelow = int64(5 * time.Millisecond)
	preciseLead  = int64(1500 * time.Microsecond)
)

// sweep drops tickets that were not polled in time and admissions that
// lapsed. l.mu is held.
func (l *localRoom) sweep(now int64) {
	l.nextSweep = now + l.sweepEvery
	for _, e := range l.tickets {
		if e.expires > now {
			continue
		}
		if e.state == inLine {
			l.line.remove(e)
			l.lostExpired++
		}
		l.drop(e, now)
	}
}

// drop forgets a ticket that left the line or whose admission ended.
// l.mu is held.
func (l *localRoom) drop(e *entry, now int64) {
	if e.state == admitted {
		if limit := l.r.cfg.maxActive; limit > 0 && l.active >= limit {
			// The line was blocked on active slots: the time it stood
			// still is not owed to it as a burst.
			l.tat = max(l.tat, now)
		}
		l.active--
	}
	e.state = gone
	if !e.held {
		delete(l.tickets, e.id)
	}
}

func (l *localRoom) join(ctx context.Context, held bool) (Ticket, any, error) {
	l.mu.Lock()
	t, e, err := l.joinLocked(held)
	n := l.takeLost()
	l.mu.Unlock()
	l.r.tel.lost(ctx, reasonExpired, n)
	if err != nil {
		return Ticket{}, nil, err
	}
	if !held && t.Admitted {
		l.r.tel.admitted(ctx, 0)
	}
	return t, e, nil
}

// joinLocked is join under l.mu.
func (l *localRoom) joinLocked(held bool) (Ticket, *entry, error) {
	cfg := &l.r.cfg
	if l.closed {
		return Ticket{}, nil, ErrClosed
	}
	now := l.now()
	l.advance(now)
	if l.line.len() >= cfg.maxLength {
		return Ticket{}, nil, ErrFull
	}
	pos := l.line.len() + 1
	eta := l.eta(pos, now)
	if cfg.rejectLong && eta > cfg.maxWait {
		return Ticket{}, nil, ErrWaitTooLong
	}
	l.seq++
	e := &entry{id: newTicketID(l.seq), joined: now, held: held}
	if held {
		e.ch = make(chan struct{})
	} else {
		e.expires = now + int64(cfg.ticketTTL)
		l.tickets[e.id] = e
	}
	l.line.push(e)
	l.advance(now)
	if !held && e.state == admitted {
		// Admitted at once: the client sees it in this answer.
		l.claim(e, now)
	}
	return l.ticket(e, now), e, nil
}

// claim hands a ticket-mode admission to its client: from now it lasts
// the admission TTL, and it carries a token. It reports whether this was
// the first claim. l.mu is held.
func (l *localRoom) claim(e *entry, now int64) bool {
	if e.claimed {
		return false
	}
	e.claimed = true
	e.expires = now + int64(l.r.cfg.admitTTL)
	if s := l.r.cfg.signer; s != nil {
		e.token = s.Issue(l.r.name, e.id, time.Now())
	}
	return true
}

// eta estimates the wait of position pos. l.mu is held.
func (l *localRoom) eta(pos int, now int64) time.Duration {
	// Until the head's turn comes nobody moves; after it, the line moves
	// at the measured rate.
	head := time.Duration(max(l.tat-now, 0))
	return min(head+etaFor(pos-1, l.est.value()), maxETA)
}

// ticket describes e. l.mu is held.
func (l *localRoom) ticket(e *entry, now int64) Ticket {
	cfg := &l.r.cfg
	t := Ticket{ID: e.id, ExpiresAt: l.at(e.expires)}
	if e.state == admitted {
		t.Admitted = true
		t.Token = e.token
		t.PollAfter = cfg.pollMin
		return t
	}
	t.Position = l.line.position(e)
	t.ETA = l.eta(t.Position, now)
	t.PollAfter = cfg.pollAfter(t.ETA)
	if e.held {
		t.ExpiresAt = time.Time{}
	}
	return t
}

func (l *localRoom) await(ctx context.Context, t Ticket, h any) (Ticket, any, error) {
	e := h.(*entry)
	select {
	case <-e.ch:
	case <-ctx.Done():
	}
	l.mu.Lock()
	if l.closed && e.state != admitted {
		l.mu.Unlock()
		return Ticket{}, nil, ErrClosed
	}
	if e.state == inLine {
		// ctx ended first: the place goes to the next in line. An
		// admission that came at the same moment is kept, since its
		// slot of the rate cannot be given back.
		l.line.remove(e)
		now := l.now()
		l.drop(e, now)
		l.advance(now)
		l.mu.Unlock()
		return Ticket{}, nil, ctx.Err()
	}
	t = Ticket{ID: e.id, Admitted: true}
	l.mu.Unlock()
	return t, e, nil
}

func (l *localRoom) release(_ string, h any) {
	e := h.(*entry)
	l.mu.Lock()
	if e.state == admitted {
		now := l.now()
		l.drop(e, now)
		if !l.closed {
			l.advance(now)
		}
	}
	l.mu.Unlock()
}

func (l *localRoom) status(ctx context.Context, id string) (Ticket, error) {
	cfg := &l.r.cfg
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return Ticket{}, ErrClosed
	}
	now := l.now()
	l.advance(now)
	e := l.tickets[id]
	if e == nil {
		n := l.takeLost()
		l.mu.Unlock()
		l.r.tel.lost(ctx, reasonExpired, n)
		return Ticket{}, ErrTicketExpired
	}
	claimed := false
	if e.state == inLine {
		e.expires = now + int64(cfg.ticketTTL)
	} else {
		claimed = l.claim(e, now)
	}
	t := l.ticket(e, now)
	waited := time.Duration(now - e.joined)
	n := l.takeLost()
	l.mu.Unlock()
	l.r.tel.lost(ctx, reasonExpired, n)
	if claimed {
		l.r.tel.admitted(ctx, waited)
	}
	return t, nil
}

func (l *localRoom) leave(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.tickets[id]
	if e == nil || l.closed {
		return nil
	}
	if e.state == inLine {
		l.line.remove(e)
	}
	now := l.now()
	l.drop(e, now)
	l.advance(now)
	return nil
}

func (l *localRoom) finish(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.tickets[id]
	if e == nil || e.state != admitted || l.closed {
		return nil
	}
	now := l.now()
	l.drop(e, now)
	l.advance(now)
	return nil
}

func (l *localRoom) stats(context.Context) (RoomStats, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if !l.closed {
		l.advance(now)
	}
	return RoomStats{
		Length:  l.line.len(),
		Active:  l.active,
		Outflow: l.est.value(),
		ETA:     l.eta(l.line.len()+1, now),
	}, nil
}

func (l *localRoom) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.timer.Stop()
	l.sleeper.close()
	l.timerAt = -1
	l.line.each(func(e *entry) bool {
		if e.held {
			close(e.ch)
		}
		return true
	})
	return nil
}
