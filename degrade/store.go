package degrade

import (
	"context"
	"maps"
	"sync"
	"time"
)

// Store keeps what operators set, shared by every [Switchboard] on it: the
// manual states of features, the shed level and the audit trail, under a
// version that grows with every change. [NewMemoryStore] keeps them in
// this process; [NewRedisStore] shares them across a fleet.
//
// Implementations must be safe for concurrent use. A Switchboard calls
// Update's fn at most once per attempt, never under a lock of its own.
type Store interface {
	// Load returns the stored state.
	Load(ctx context.Context) (Stored, error)
	// Update changes the stored state atomically: fn gets the current
	// state and returns the new one and the audit entry that records the
	// change. Update stores both under the next version, or returns fn's
	// error and changes nothing.
	Update(ctx context.Context, fn func(Stored) (Stored, AuditEntry, error)) (Stored, error)
	// Watch calls changed whenever the stored state may have changed,
	// until stop is called. changed must return quickly. Watch may
	// miss changes (pub/sub drops messages when a connection breaks), so
	// a Switchboard also re-reads the store now and then.
	Watch(changed func()) (stop func())
	// Audit returns up to n entries of the audit trail, newest first.
	Audit(ctx context.Context, n int) ([]AuditEntry, error)
}

// Stored is the state a [Store] holds.
type Stored struct {
	// Version grows with every change.
	Version uint64 `json:"version"`
	// Manual holds the features an operator set, by name.
	Manual map[string]Manual `json:"manual,omitempty"`
	// Shed is the level an operator shed; 0 for none.
	Shed Level `json:"shed,omitempty"`
	// ShedBy records who shed the level, when and why.
	ShedBy *Manual `json:"shed_by,omitempty"`
}

// clone returns a copy of s that shares nothing mutable with it.
func (s Stored) clone() Stored {
	s.Manual = maps.Clone(s.Manual)
	if s.ShedBy != nil {
		b := *s.ShedBy
		s.ShedBy = &b
	}
	return s
}

// Manual is a feature state an operator set, with who, when and why.
type Manual struct {
	State  State     `json:"state"`
	By     string    `json:"by"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// NewMemoryStore returns a store in this process, keeping the newest
// auditSize entries of the audit trail (1000 if auditSize < 1).
func NewMemoryStore(auditSize int) Store {
	if auditSize < 1 {
		auditSize = defaultAuditSize
	}
	return &memoryStore{size: auditSize, watchers: make(map[int]func())}
}

const defaultAuditSize = 1000

type memoryStore struct {
	size int

	mu       sync.Mutex
	st       Stored
	audit    []AuditEntry // oldest first
	watchers map[int]func()
	nextID   int
}

func (m *memoryStore) Load(context.Context) (Stored, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.clone(), nil
}

func (m *memoryStore) Update(ctx context.Context, fn func(Stored) (Stored, AuditEntry, error)) (Stored, error) {
	for range maxAttempts {
		if err := ctx.Err(); err != nil {
			return Stored{}, err
		}
		m.mu.Lock()
		cur := m.st.clone()
		m.mu.Unlock()
		next, entry, err := fn(cur)
		if err != nil {
			return Stored{}, err
		}
		m.mu.Lock()
		if m.st.Version != cur.Version {
			// Another change came in while fn ran: start again from it.
			m.mu.Unlock()
			continue
		}
		next.Version = cur.Version + 1
		m.st = next.clone()
		m.audit = append(m.audit, entry)
		if over := len(m.audit) - m.size; over > 0 {
			m.audit = append(m.audit[:0], m.audit[over:]...)
		}
		ws := make([]func(), 0, len(m.watchers))
		for _, w := range m.watchers {
			ws = append(ws, w)
		}
		m.mu.Unlock()
		for _, w := range ws {
			w()
		}
		return next, nil
	}
	return Stored{}, ErrConflict
}

// maxAttempts bounds how often Update starts again after losing a race.
const maxAttempts = 20

func (m *memoryStore) Watch(changed func()) (stop func()) {
	m.mu.Lock()
	id := m.nextID
	m.nextID++
	m.watchers[id] = changed
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.watchers, id)
		m.mu.Unlock()
	}
}

func (m *memoryStore) Audit(_ context.Context, n int) ([]AuditEntry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n = min(max(n, 0), len(m.audit))
	out := make([]AuditEntry, n)
	for i := range n {
		out[i] = m.audit[len(m.audit)-1-i]
	}
	return out, nil
}
