package queue

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"sync"
	"time"
)

// memoryStore is the in-process implementation of Store. It follows the
// Redis store step for step (entries, leases counted by deliveries, the
// delayed set, dead letters, idempotency records with a TTL) so that tests
// and demos on it see the same behaviour, but it lives and dies with the
// process.
type memoryStore struct {
	name    string
	idemTTL time.Duration

	mu        sync.Mutex
	lastMS    int64
	seq       int64
	ready     []*memEntry // never delivered, oldest first, from readyHead
	readyHead int
	pending   map[string]*memPending // by entry ID
	delayed   []memDelayed           // by due time
	dead      []Message
	idem      map[string]memIdem
	idemQ     []memIdemExpiry // by expiry: the TTL is the same for all
	waiters   int
	wake      chan struct{} // closed when ready gains entries while waiters > 0
}

// memEntry is one entry of the line. msg.Attempt is the attempt of its
// first delivery, as the Redis store's "attempt" field.
type memEntry struct {
	id      string
	ms, seq int64
	msg     Message
}

type memPending struct {
	e          *memEntry
	owner      string
	since      time.Time // last delivery or lease renewal
	deliveries int
}

type memDelayed struct {
	due time.Time
	msg Message
}

type memIdem struct {
	id      string
	expires time.Time
}

type memIdemExpiry struct {
	key     string
	expires time.Time
}

// NewMemoryStore returns a store that keeps the buffer called name in this
// process's memory.
//
// It is NOT durable: everything it holds is lost when the process exits,
// and only Buffers in this process share it. It is for tests, demos and
// work that may be lost; use [NewRedisStore] for orders. Otherwise it
// behaves as the Redis store does: idempotency keys, retries with backoff,
// dead letters, visibility timeouts and reclaim. Its dead letters and
// idempotency records are bounded by memory only. Its errors match
// [ErrInvalidConfig] and name the bad argument.
func NewMemoryStore(name string, opts ...MemoryStoreOption) (Store, error) {
	if err := validateStoreName(name); err != nil {
		return nil, err
	}
	c := defaultStoreConfig()
	for i, o := range opts {
		if o == nil {
			return nil, configError("opts", "must not contain nil, at index", i)
		}
		o.applyMemoryStore(&c)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &memoryStore{
		name:    name,
		idemTTL: c.idemTTL,
		pending: make(map[string]*memPending),
		idem:    make(map[string]memIdem),
		wake:    make(chan struct{}),
	}, nil
}

func (s *memoryStore) storeName() string { return s.name }

// addLocked appends msg to the line as a new entry, with an ID made as
// Redis makes stream IDs: milliseconds and a sequence within them.
func (s *memoryStore) addLocked(now time.Time, msg Message) *memEntry {
	ms := now.UnixMilli()
	if ms > s.lastMS {
		s.lastMS, s.seq = ms, 0
	} else {
		s.seq++
	}
	e := &memEntry{ms: s.lastMS, seq: s.seq}
	e.id = strconv.FormatInt(e.ms, 10) + "-" + strconv.FormatInt(e.seq, 10)
	if msg.ID == "" {
		msg.ID = e.id
		msg.EnqueuedAt = time.UnixMilli(e.ms)
	}
	e.msg = msg
	s.ready = append(s.ready, e)
	if s.waiters > 0 {
		close(s.wake)
		s.wake = make(chan struct{})
	}
	return e
}

func (s *memoryStore) enqueue(ctx context.Context, key string, body []byte, maxDepth int64) (enqueueResult, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireIdemLocked(now)
	if key != "" {
		if r, ok := s.idem[key]; ok {
			return enqueueResult{id: r.id, duplicate: true}, nil
		}
	}
	if maxDepth > 0 {
		if depth := s.depthLocked(); depth >= maxDepth {
			return enqueueResult{full: true, depth: depth}, nil
		}
	}
	e := s.addLocked(now, Message{Key: key, Body: append([]byte{}, body...), Attempt: 1})
	if key != "" {
		exp := now.Add(s.idemTTL)
		s.idem[key] = memIdem{id: e.id, expires: exp}
		s.idemQ = append(s.idemQ, memIdemExpiry{key: key, expires: exp})
	}
	return enqueueResult{id: e.id}, nil
}

func (s *memoryStore) expireIdemLocked(now time.Time) {
	i := 0
	for ; i < len(s.idemQ) && !now.Before(s.idemQ[i].expires); i++ {
		x := s.idemQ[i]
		if r, ok := s.idem[x.key]; ok && r.expires.Equal(x.expires) {
			delete(s.idem, x.key)
		}
	}
	if i > 0 {
		s.idemQ = slices.Delete(s.idemQ, 0, i)
	}
}

func (s *memoryStore) depthLocked() int64 {
	return int64(len(s.ready) - s.readyHead + len(s.pending) + len(s.delayed))
}

func (s *memoryStore) ensureGroup(context.Context) error { return nil }

func (s *memoryStore) fetch(ctx context.Context, consumer string, n int, block time.Duration) ([]delivery, error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		s.mu.Lock()
		if ready := s.ready[s.readyHead:]; len(ready) > 0 {
			now := time.Now()
			k := min(n, len(ready))
			ds := make([]delivery, k)
			for i, e := range ready[:k] {
				s.pending[e.id] = &memPending{e: e, owner: consumer, since: now, deliveries: 1}
				ds[i] = delivery{entry: e.id, msg: copyMessage(e.msg)}
				ready[i] = nil
			}
			s.readyHead += k
			// Reuse the front of the slice once most of it is consumed.
			if s.readyHead >= 64 && s.readyHead*2 >= len(s.ready) {
				s.ready = s.ready[:copy(s.ready, s.ready[s.readyHead:])]
				s.readyHead = 0
			}
			s.mu.Unlock()
			return ds, nil
		}
		s.waiters++
		wake := s.wake
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(block)
		}
		timedOut := false
		var err error
		select {
		case <-wake:
		case <-timer.C:
			timedOut = true
		case <-ctx.Done():
			err = ctx.Err()
		}
		s.mu.Lock()
		s.waiters--
		s.mu.Unlock()
		if timedOut || err != nil {
			return nil, err
		}
	}
}

func copyMessage(m Message) Message {
	m.Body = append([]byte{}, m.Body...)
	return m
}

// sortedPendingLocked lists the deliveries in entry order, as Redis scans
// its pending entries.
func (s *memoryStore) sortedPendingLocked() []*memPending {
	ps := make([]*memPending, 0, len(s.pending))
	for _, p := range s.pending {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b *memPending) int {
		return cmp.Or(cmp.Compare(a.e.ms, b.e.ms), cmp.Compare(a.e.seq, b.e.seq))
	})
	return ps
}

func (s *memoryStore) reclaim(_ context.Context, consumer, _ string, minIdle time.Duration, n, maxAttempts int) ([]delivery, int, string, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var ds []delivery
	dead := 0
	for _, p := range s.sortedPendingLocked() {
		if len(ds) >= n {
			break
		}
		if now.Sub(p.since) < minIdle {
			continue
		}
		p.deliveries++
		attempt := p.e.msg.Attempt + p.deliveries - 1
		if attempt > maxAttempts {
			delete(s.pending, p.e.id)
			m := copyMessage(p.e.msg)
			m.Attempt = attempt - 1
			m.LastError = "queue: not acknowledged within the visibility timeout (the consumer stopped or lost its lease)"
			s.dead = append(s.dead, m)
			dead++
			continue
		}
		p.owner, p.since = consumer, now
		m := copyMessage(p.e.msg)
		m.Attempt = attempt
		ds = append(ds, delivery{entry: p.e.id, msg: m})
	}
	return ds, dead, "", nil
}

func (s *memoryStore) extend(_ context.Context, consumer string, entries []string) error {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range entries {
		if p := s.pending[id]; p != nil && p.owner == consumer {
			p.since = now
		}
	}
	return nil
}

func (s *memoryStore) ack(_ context.Context, entries []string) error {
	s.mu.Lock()
	for _, e := range entries {
		delete(s.pending, e)
	}
	s.mu.Unlock()
	return nil
}

func (s *memoryStore) requeue(_ context.Context, consumer string, r requeueRequest) (bool, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pending[r.entry]
	if p == nil || p.owner != consumer {
		return false, nil
	}
	delete(s.pending, r.entry)
	m := p.e.msg // the store's own copy: the handler had another
	m.Attempt = r.attempt
	if r.setErr {
		m.LastError = r.errText
	}
	if r.dead {
		s.dead = append(s.dead, m)
		return true, nil
	}
	d := memDelayed{due: now.Add(r.delay), msg: m}
	i, _ := slices.BinarySearchFunc(s.delayed, d.due, func(x memDelayed, t time.Time) int {
		// After every equal due time: first due, first out.
		if x.due.After(t) {
			return 1
		}
		return -1
	})
	s.delayed = slices.Insert(s.delayed, i, d)
	return true, nil
}

func (s *memoryStore) handBack(_ context.Context, consumer string) (int, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, p := range s.sortedPendingLocked() {
		if p.owner != consumer {
			continue
		}
		delete(s.pending, p.e.id)
		m := p.e.msg
		m.Attempt += p.deliveries - 1
		s.addLocked(now, m)
		n++
	}
	return n, nil
}

func (s *memoryStore) promote(_ context.Context, n int) (int, time.Duration, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := 0
	for k < len(s.delayed) && k < n && !s.delayed[k].due.After(now) {
		s.addLocked(now, s.delayed[k].msg)
		k++
	}
	s.delayed = slices.Delete(s.delayed, 0, k)
	next := time.Duration(-1)
	if len(s.delayed) > 0 {
		next = max(s.delayed[0].due.Sub(now), 0)
	}
	return k, next, nil
}

func (s *memoryStore) stats(context.Context) (BufferStats, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := BufferStats{
		Depth:   s.depthLocked(),
		Pending: int64(len(s.pending)),
		Delayed: int64(len(s.delayed)),
		Dead:    int64(len(s.dead)),
	}
	var head *memEntry
	if s.readyHead < len(s.ready) {
		head = s.ready[s.readyHead]
	}
	for _, p := range s.pending {
		if head == nil || p.e.ms < head.ms || (p.e.ms == head.ms && p.e.seq < head.seq) {
			head = p.e
		}
	}
	if head != nil {
		st.OldestAge = max(now.Sub(head.msg.EnqueuedAt), 0)
	}
	return st, nil
}

func (s *memoryStore) deadLetters(_ context.Context, n int) ([]Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Message, min(n, len(s.dead)))
	for i := range out {
		out[i] = copyMessage(s.dead[i])
	}
	return out, nil
}

func (s *memoryStore) redrive(_ context.Context, n int) (int, error) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(n, len(s.dead))
	for _, m := range s.dead[:k] {
		m.Attempt = 1
		s.addLocked(now, m)
	}
	s.dead = slices.Delete(s.dead, 0, k)
	return k, nil
}
