package shop

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/redis/go-redis/v9"
)

// order is an order as stored: what the API shows, and the card, which a
// payment from the buffer needs.
type order struct {
	api.Order
	Card string
}

// orders keeps the orders and counts them by status. Status changes are
// transitions from an expected status, so a payment taken twice from the
// buffer (delivery is at least once) is recorded once.
type orders interface {
	create(ctx context.Context, o order) error
	// transition moves an order from one status to another, recording
	// the provider of a payment; it reports false if the order was not
	// in status from.
	transition(ctx context.Context, id, from, to, provider string) (bool, error)
	// remove forgets an order that was never accepted.
	remove(ctx context.Context, id string) error
	get(ctx context.Context, id string) (order, bool, error)
	// counts reports the orders by status and the payments by provider.
	counts(ctx context.Context) (byStatus, paidBy map[string]int64, err error)
	reset(ctx context.Context) error
}

type memoryOrders struct {
	mu       sync.Mutex
	byID     map[string]*order
	byStatus map[string]int64
	paidBy   map[string]int64
}

func newMemoryOrders() *memoryOrders {
	m := &memoryOrders{}
	_ = m.reset(context.Background())
	return m
}

func (m *memoryOrders) create(_ context.Context, o order) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.byID[o.ID]; ok {
		return fmt.Errorf("order %s exists", o.ID)
	}
	m.byID[o.ID] = &o
	m.count(o.Status, o.Provider, 1)
	return nil
}

func (m *memoryOrders) count(status, provider string, n int64) {
	m.byStatus[status] += n
	if status == api.StatusPaid {
		m.paidBy[provider] += n
	}
}

func (m *memoryOrders) transition(_ context.Context, id, from, to, provider string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.byID[id]
	if !ok || o.Status != from {
		return false, nil
	}
	m.count(o.Status, o.Provider, -1)
	o.Status, o.Provider, o.Updated = to, provider, time.Now()
	m.count(to, provider, 1)
	return true, nil
}

func (m *memoryOrders) remove(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o, ok := m.byID[id]; ok {
		m.count(o.Status, o.Provider, -1)
		delete(m.byID, id)
	}
	return nil
}

func (m *memoryOrders) get(_ context.Context, id string) (order, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o, ok := m.byID[id]
	if !ok {
		return order{}, false, nil
	}
	return *o, true, nil
}

func (m *memoryOrders) counts(context.Context) (map[string]int64, map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return cloneCounts(m.byStatus), cloneCounts(m.paidBy), nil
}

func (m *memoryOrders) reset(context.Context) error {
	m.mu.Lock()
	m.byID = make(map[string]*order)
	m.byStatus = make(map[string]int64)
	m.paidBy = make(map[string]int64)
	m.mu.Unlock()
	return nil
}

func cloneCounts(c map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(c))
	for k, v := range c {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// redisOrders keeps each order in a hash and the counts in another, all
// under one hash tag so the scripts that change both stay in one slot of
// a cluster.
type redisOrders struct {
	client redis.UniversalClient
	prefix string // ends in "{orders}:"
}

func (r *redisOrders) key(id string) string { return r.prefix + "o:" + id }
func (r *redisOrders) countsKey() string    { return r.prefix + "counts" }

// createScript: KEYS order hash, counts hash; ARGV status, provider, then
// field/value pairs. Returns 0 if the order exists.
var createScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[1] == 'paid' then redis.call('HINCRBY', KEYS[2], 'paid_by:' .. ARGV[2], 1) end
return 1
`)

// transitionScript: KEYS order hash, counts hash; ARGV from, to, provider,
// updated (RFC 3339). Returns 1 if the order was in status from.
var transitionScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'status', 'provider')
if cur[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'provider', ARGV[3], 'updated', ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
if ARGV[1] == 'paid' then redis.call('HINCRBY', KEYS[2], 'paid_by:' .. (cur[2] or ''), -1) end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
if ARGV[2] == 'paid' then redis.call('HINCRBY', KEYS[2], 'paid_by:' .. ARGV[3], 1) end
return 1
`)

// removeScript: KEYS order hash, counts hash.
var removeScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'status', 'provider')
if not cur[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HINCRBY', KEYS[2], cur[1], -1)
if cur[1] == 'paid' then redis.call('HINCRBY', KEYS[2], 'paid_by:' .. (cur[2] or ''), -1) end
return 1
`)

func (r *redisOrders) create(ctx context.Context, o order) error {
	args := []any{o.Status, o.Provider,
		"id", o.ID, "user", o.User, "sku", o.SKU, "status", o.Status, "provider", o.Provider,
		"card", o.Card, "created", o.Created.Format(time.RFC3339Nano), "updated", o.Updated.Format(time.RFC3339Nano)}
	n, err := createScript.Run(ctx, r.client, []string{r.key(o.ID), r.countsKey()}, args...).Int()
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("order %s exists", o.ID)
	}
	return nil
}

func (r *redisOrders) transition(ctx context.Context, id, from, to, provider string) (bool, error) {
	n, err := transitionScript.Run(ctx, r.client, []string{r.key(id), r.countsKey()},
		from, to, provider, time.Now().Format(time.RFC3339Nano)).Int()
	return n == 1, err
}

func (r *redisOrders) remove(ctx context.Context, id string) error {
	return removeScript.Run(ctx, r.client, []string{r.key(id), r.countsKey()}).Err()
}

func (r *redisOrders) get(ctx context.Context, id string) (order, bool, error) {
	m, err := r.client.HGetAll(ctx, r.key(id)).Result()
	if err != nil || len(m) == 0 {
		return order{}, false, err
	}
	o := order{Order: api.Order{ID: m["id"], User: m["user"], SKU: m["sku"], Status: m["status"], Provider: m["provider"]}, Card: m["card"]}
	o.Created, _ = time.Parse(time.RFC3339Nano, m["created"])
	o.Updated, _ = time.Parse(time.RFC3339Nano, m["updated"])
	return o, true, nil
}

func (r *redisOrders) counts(ctx context.Context) (map[string]int64, map[string]int64, error) {
	m, err := r.client.HGetAll(ctx, r.countsKey()).Result()
	if err != nil {
		return nil, nil, err
	}
	byStatus, paidBy := make(map[string]int64), make(map[string]int64)
	for k, v := range m {
		var n int64
		if _, err := fmt.Sscan(v, &n); err != nil {
			return nil, nil, fmt.Errorf("order count %s: %q: %w", k, v, err)
		}
		if n == 0 {
			continue
		}
		if p, ok := strings.CutPrefix(k, "paid_by:"); ok {
			paidBy[p] = n
		} else {
			byStatus[k] = n
		}
	}
	return byStatus, paidBy, nil
}

// reset deletes every order of the previous sale.
func (r *redisOrders) reset(ctx context.Context) error {
	iter := r.client.Scan(ctx, 0, r.prefix+"*", 1000).Iterator()
	var batch []string
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := r.client.Unlink(ctx, batch...).Err()
		batch = batch[:0]
		return err
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	return flush()
}
