package fleettest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

// The room scenario: four processes share one Redis room. On each,
// roomHeld clients stand in line with Room.Wait and roomPolled clients
// take tickets with Room.Join and poll Room.Status; every client joins
// again as soon as it is admitted, from the start for roomRun. With 48
// clients and 50 admissions a second the line stays about a second long,
// so it never empties while they run.
const (
	roomRate   = 50.0
	roomRun    = 9 * time.Second
	roomHeld   = 6
	roomPolled = 6
	// roomWarmup and roomCooldown trim the rate window: the line is
	// filled at the start, and clients stop at roomRun.
	roomWarmup   = 1 * time.Second
	roomCooldown = 250 * time.Millisecond
	// roomTolerance is the accepted error of the measured rate.
	roomTolerance = 0.02
)

// roomReport is one worker's tickets.
type roomReport struct {
	Tickets []ticketRecord
	// Polls counts Status calls.
	Polls int
	// Errors counts failed calls, Unavailable those of them that failed
	// because Redis did not answer in time (queue.ErrUnavailable).
	Errors, Unavailable int
	// FirstErrs holds the first few errors.
	FirstErrs []string
}

// pollEvery is how long a polled client waits before asking again, by its
// place in line: often near the head, where being seen in line after a
// later ticket's admission would catch an overtaking, less often further
// back.
func pollEvery(position int) time.Duration {
	switch {
	case position <= 3:
		return 5 * time.Millisecond
	case position <= 10:
		return 20 * time.Millisecond
	}
	return 50 * time.Millisecond
}

func roomWorker(ctx context.Context, w *worker) (any, error) {
	room, err := queue.NewRoom("fleet", roomRate,
		queue.WithRedis(w.client), queue.WithKeyPrefix(w.prefix+"queue:"))
	if err != nil {
		return nil, err
	}
	defer room.Close()
	if err := w.client.Ping(ctx).Err(); err != nil {
		return nil, err
	}
	if err := w.waitStart(ctx); err != nil {
		return nil, err
	}
	end := w.at(roomRun)

	var (
		mu  sync.Mutex
		rep roomReport
	)
	record := func(t ticketRecord, polls int) {
		mu.Lock()
		defer mu.Unlock()
		t.Worker = w.index
		rep.Tickets = append(rep.Tickets, t)
		rep.Polls += polls
	}
	failed := func(op string, err error) {
		mu.Lock()
		defer mu.Unlock()
		rep.Errors++
		if errors.Is(err, queue.ErrUnavailable) {
			rep.Unavailable++
		}
		if len(rep.FirstErrs) < 5 {
			rep.FirstErrs = append(rep.FirstErrs, fmt.Sprintf("%s at %v: %v", op, w.clock.now().Sub(w.start).Round(time.Millisecond), err))
		}
	}

	var wg sync.WaitGroup
	for range roomHeld {
		wg.Go(func() {
			wctx, cancel := context.WithDeadline(ctx, end.Add(-w.clock.offset))
			defer cancel()
			for w.clock.now().Before(end) {
				s := w.clock.ns()
				adm, err := room.Wait(wctx)
				e := w.clock.ns()
				if err != nil {
					if wctx.Err() != nil {
						return
					}
					failed("wait", err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				n, err := idNumber(adm.Ticket)
				if err != nil {
					failed("wait", err)
				}
				record(ticketRecord{Number: n, Held: true, Joined: s, Admitted: e}, 0)
				adm.Done()
			}
		})
	}
	for range roomPolled {
		wg.Go(func() {
			for w.clock.now().Before(end) {
				s := w.clock.ns()
				tk, err := room.Join(ctx)
				e := w.clock.ns()
				if err != nil {
					failed("join", err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				rec := ticketRecord{Number: tk.Number, Joined: e}
				if tk.Admitted {
					rec.Admitted = e
				} else {
					rec.InLine = s
				}
				polls := 0
				pos := tk.Position
				for rec.Admitted == 0 {
					if !w.clock.now().Before(end) {
						// Give the place up; the ticket was never seen
						// admitted.
						if err := room.Leave(ctx, tk.ID); err != nil {
							failed("leave", err)
						}
						break
					}
					time.Sleep(pollEvery(pos))
					s := w.clock.ns()
					st, err := room.Status(ctx, tk.ID)
					e := w.clock.ns()
					polls++
					if err != nil {
						failed("status", err)
						break
					}
					if st.Admitted {
						rec.Admitted = e
						if err := room.Done(ctx, tk.ID); err != nil {
							failed("done", err)
						}
					} else {
						rec.InLine = s
						pos = st.Position
					}
				}
				record(rec, polls)
			}
		})
	}
	wg.Wait()
	return rep, nil
}

// idNumber reads the number of a ticket ID, "number-random".
func idNumber(id string) (uint64, error) {
	n, _, ok := strings.Cut(id, "-")
	if !ok {
		return 0, fmt.Errorf("ticket ID %q has no number", id)
	}
	return strconv.ParseUint(n, 10, 64)
}

// TestFleetRoom checks that a Redis room shared by four processes is one
// fair line: no ticket is admitted before a lower-numbered one, whichever
// instance either was taken on, and the line moves at the configured rate.
//
// FIFO is checked by findOvertaking: a ticket seen in line by a call that
// began after a higher-numbered ticket's admission was seen is a
// violation, whatever the delays, since Redis admitted the one before the
// answer came and found the other in line after the call began.
//
// The rate is measured over a window that the records prove the line was
// never empty in: each polled ticket was certainly in line from when its
// Join returned to when its last in-line Status began, and the window must
// be covered by those spans. The admissions seen within the window, over
// its length, is the rate. Each admission is seen a little after Redis
// made it (a poll's or the poller's delay, milliseconds); the same delay
// at both ends of the window shifts it rather than changing its count.
func TestFleetRoom(t *testing.T) {
	fleetScenario(t, "room", roomRun+30*time.Second, checkRoom)
}

func checkRoom(t *testing.T, run fleetRun) (misses []string) {
	reps := reports[roomReport](t, run)

	var (
		tickets                         []ticketRecord
		polls, errs                     int
		held, polled, admitted, heldAdm int
		waitHeld, waitPolled            []time.Duration
	)
	for i, r := range reps {
		tickets = append(tickets, r.Tickets...)
		polls += r.Polls
		errs += r.Errors
		switch {
		case r.Errors > r.Unavailable:
			t.Errorf("worker %d: %d room calls failed: %s", i, r.Errors, strings.Join(r.FirstErrs, "; "))
		case r.Errors > 0:
			// Redis did not answer in time: the machine, not the room.
			misses = append(misses, fmt.Sprintf("worker %d: %d room calls found Redis unavailable: %s", i, r.Errors, strings.Join(r.FirstErrs, "; ")))
		}
		adm := 0
		for _, tk := range r.Tickets {
			if tk.Admitted != 0 {
				adm++
			}
		}
		t.Logf("worker %d: %d tickets, %d admitted, %d polls", i, len(r.Tickets), adm, r.Polls)
	}
	for _, tk := range tickets {
		if tk.Held {
			held++
		} else {
			polled++
		}
		if tk.Admitted == 0 {
			continue
		}
		admitted++
		d := time.Duration(tk.Admitted - tk.Joined)
		if tk.Held {
			heldAdm++
			waitHeld = append(waitHeld, d)
		} else {
			waitPolled = append(waitPolled, d)
		}
	}
	t.Logf("fleet: %d tickets (%d held by Wait, %d polled), %d admitted, %d polls", len(tickets), held, polled, admitted, polls)
	t.Logf("time in line, Wait: %v", distOf(waitHeld))
	t.Logf("time in line, Join+Status: %v", distOf(waitPolled))

	if dup := duplicateNumbers(tickets); len(dup) > 0 {
		t.Errorf("%d ticket numbers were given twice, such as %v", len(dup), dup[:min(len(dup), 5)])
	}
	found, pairs := findOvertaking(tickets)
	t.Logf("FIFO: %d pairs of a ticket seen in line and a higher-numbered one seen admitted compared, %d overtakings", pairs, len(found))
	for i, o := range found {
		if i == 5 {
			t.Errorf("and %d more overtakings", len(found)-i)
			break
		}
		t.Errorf("overtaken: %v", o)
	}
	// A stalled machine lets fewer tickets through, so these are timing
	// targets: the check must have seen enough to mean something.
	if pairs < 1000 {
		misses = append(misses, fmt.Sprintf("only %d pairs compared: the FIFO check saw too little to mean much", pairs))
	}
	if heldAdm == 0 || admitted == heldAdm {
		misses = append(misses, fmt.Sprintf("admitted %d held and %d polled tickets: both kinds must take part", heldAdm, admitted-heldAdm))
	}

	from, to := run.start+int64(roomWarmup), run.start+int64(roomRun-roomCooldown)
	if g := gaps(inLineSpans(tickets), from, to); len(g) > 0 {
		return append(misses, fmt.Sprintf("the line may have been empty in %d gaps of the rate window, such as %s to %s: the rate cannot be measured",
			len(g), ms(run.start, g[0].From), ms(run.start, g[0].To)))
	}
	n := 0
	for _, tk := range tickets {
		if tk.Admitted >= from && tk.Admitted < to {
			n++
		}
	}
	window := time.Duration(to - from)
	rate := float64(n) / window.Seconds()
	off := (rate - roomRate) / roomRate
	t.Logf("rate: %d admissions seen in the %v from %v after the start, while the line was never empty: %.2f/s, want %.0f/s ± %.0f%%: off by %+.2f%%",
		n, window, roomWarmup, rate, roomRate, 100*roomTolerance, 100*off)
	if math.Abs(off) > roomTolerance {
		misses = append(misses, fmt.Sprintf("the line moved at %.2f/s, want %.0f/s within %.0f%% (off by %+.2f%%)", rate, roomRate, 100*roomTolerance, 100*off))
	}
	return misses
}
