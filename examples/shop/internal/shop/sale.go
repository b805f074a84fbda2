package shop

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/examples/shop/internal/api"
	"github.com/redis/go-redis/v9"
)

// errSoldOut means an item has no stock left.
var errSoldOut = errors.New("sold out")

// order is an order as stored: what the API shows, and the card, which a
// payment from the buffer needs.
type order struct {
	api.Order
	Card string
}

// sale keeps the stock and the orders together, so that every change to
// an order and to the stock it holds is one atomic step: a unit is taken
// as its order is created (pending), and given back as the order is
// declined or cancelled. Nothing is oversold however many buyers race for
// the last unit, and no unit leaks between two steps.
//
// An order leaves pending once: the transitions return false for an order
// that is not pending, so a payment settled twice (the buffer delivers at
// least once) is recorded once.
type sale interface {
	// reserve takes a unit of o.SKU and creates o as pending, or fails
	// with errSoldOut.
	reserve(ctx context.Context, o order) error
	// pay moves a pending order to paid by provider.
	pay(ctx context.Context, id, provider string) (bool, error)
	// decline moves a pending order to declined and gives its unit back.
	decline(ctx context.Context, id string) (bool, error)
	// cancel deletes a pending order that was never accepted and gives its
	// unit back.
	cancel(ctx context.Context, id string) (bool, error)
	get(ctx context.Context, id string) (order, bool, error)
	// left reports the units left of each SKU.
	left(ctx context.Context) (map[string]int64, error)
	// counts reports the orders by status and the payments by provider.
	counts(ctx context.Context) (byStatus, paidBy map[string]int64, err error)
	// reset starts a new sale: the stock is set and old orders deleted.
	reset(ctx context.Context, stock map[string]int64) error
}

// Status of an order removed by cancel, for the transitions only.
const cancelled = "cancelled"

type memorySale struct {
	mu       sync.Mutex
	stock    map[string]int64
	byID     map[string]*order
	byStatus map[string]int64
	paidBy   map[string]int64
}

func newMemorySale(stock map[string]int64) *memorySale {
	s := &memorySale{}
	_ = s.reset(context.Background(), stock)
	return s
}

func (s *memorySale) reserve(_ context.Context, o order) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stock[o.SKU] <= 0 {
		return errSoldOut
	}
	if _, ok := s.byID[o.ID]; ok {
		return fmt.Errorf("order %s exists", o.ID)
	}
	s.stock[o.SKU]--
	o.Status = api.StatusPending
	s.byID[o.ID] = &o
	s.byStatus[api.StatusPending]++
	return nil
}

func (s *memorySale) settle(id, to, provider string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.byID[id]
	if !ok || o.Status != api.StatusPending {
		return false
	}
	s.byStatus[api.StatusPending]--
	if to != api.StatusPaid {
		s.stock[o.SKU]++
	}
	if to == cancelled {
		delete(s.byID, id)
		return true
	}
	o.Status, o.Provider, o.Updated = to, provider, time.Now()
	s.byStatus[to]++
	if to == api.StatusPaid {
		s.paidBy[provider]++
	}
	return true
}

func (s *memorySale) pay(_ context.Context, id, provider string) (bool, error) {
	return s.settle(id, api.StatusPaid, provider), nil
}

func (s *memorySale) decline(_ context.Context, id string) (bool, error) {
	return s.settle(id, api.StatusDeclined, ""), nil
}

func (s *memorySale) cancel(_ context.Context, id string) (bool, error) {
	return s.settle(id, cancelled, ""), nil
}

func (s *memorySale) get(_ context.Context, id string) (order, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	o, ok := s.byID[id]
	if !ok {
		return order{}, false, nil
	}
	return *o, true, nil
}

func (s *memorySale) left(context.Context) (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneCounts(s.stock, true), nil
}

func (s *memorySale) counts(context.Context) (map[string]int64, map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return cloneCounts(s.byStatus, false), cloneCounts(s.paidBy, false), nil
}

func (s *memorySale) reset(_ context.Context, stock map[string]int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stock = cloneCounts(stock, true)
	s.byID = make(map[string]*order)
	s.byStatus = make(map[string]int64)
	s.paidBy = make(map[string]int64)
	return nil
}

// cloneCounts copies c, leaving out zeros unless keepZero.
func cloneCounts(c map[string]int64, keepZero bool) map[string]int64 {
	out := make(map[string]int64, len(c))
	for k, v := range c {
		if v != 0 || keepZero {
			out[k] = v
		}
	}
	return out
}

// redisSale keeps the sale in Redis, shared by the fleet: the stock in one
// hash (a field per SKU), each order in a hash, and the counts in another,
// all under one hash tag so that each script's keys stay in one slot of a
// cluster.
type redisSale struct {
	client redis.UniversalClient
	prefix string // ends in "{sale}:"
}

func (r *redisSale) stockKey() string          { return r.prefix + "stock" }
func (r *redisSale) countsKey() string         { return r.prefix + "counts" }
func (r *redisSale) orderKey(id string) string { return r.prefix + "o:" + id }

// reserveScript: KEYS stock, order, counts; ARGV SKU, then the order's
// field/value pairs. Returns the units left, -1 when sold out, -2 when the
// order exists.
var reserveScript = redis.NewScript(`
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n <= 0 then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('HINCRBY', KEYS[3], 'pending', 1)
return n - 1
`)

// settleScript: KEYS order, counts, stock; ARGV the new status (paid,
// declined or cancelled), the provider, the time. Returns 1 if the order
// was pending and moved, 0 otherwise.
var settleSaleScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'status', 'sku')
if cur[1] ~= 'pending' then return 0 end
redis.call('HINCRBY', KEYS[2], 'pending', -1)
if ARGV[1] ~= 'paid' then redis.call('HINCRBY', KEYS[3], cur[2], 1) end
if ARGV[1] == 'cancelled' then
  redis.call('DEL', KEYS[1])
  return 1
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'provider', ARGV[2], 'updated', ARGV[3])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if ARGV[1] == 'paid' then redis.call('HINCRBY', KEYS[2], 'paid_by:' .. ARGV[2], 1) end
return 1
`)

func (r *redisSale) reserve(ctx context.Context, o order) error {
	args := []any{o.SKU,
		"id", o.ID, "user", o.User, "sku", o.SKU, "status", api.StatusPending, "card", o.Card,
		"created", o.Created.Format(time.RFC3339Nano), "updated", o.Updated.Format(time.RFC3339Nano)}
	n, err := reserveScript.Run(ctx, r.client, []string{r.stockKey(), r.orderKey(o.ID), r.countsKey()}, args...).Int64()
	switch {
	case err != nil:
		return err
	case n == -1:
		return errSoldOut
	case n == -2:
		return fmt.Errorf("order %s exists", o.ID)
	}
	return nil
}

func (r *redisSale) settle(ctx context.Context, id, to, provider string) (bool, error) {
	n, err := settleSaleScript.Run(ctx, r.client, []string{r.orderKey(id), r.countsKey(), r.stockKey()},
		to, provider, time.Now().Format(time.RFC3339Nano)).Int()
	return n == 1, err
}

func (r *redisSale) pay(ctx context.Context, id, provider string) (bool, error) {
	return r.settle(ctx, id, api.StatusPaid, provider)
}

func (r *redisSale) decline(ctx context.Context, id string) (bool, error) {
	return r.settle(ctx, id, api.StatusDeclined, "")
}

func (r *redisSale) cancel(ctx context.Context, id string) (bool, error) {
	return r.settle(ctx, id, cancelled, "")
}

func (r *redisSale) get(ctx context.Context, id string) (order, bool, error) {
	m, err := r.client.HGetAll(ctx, r.orderKey(id)).Result()
	if err != nil || len(m) == 0 {
		return order{}, false, err
	}
	o := order{Order: api.Order{ID: m["id"], User: m["user"], SKU: m["sku"], Status: m["status"], Provider: m["provider"]}, Card: m["card"]}
	o.Created, _ = time.Parse(time.RFC3339Nano, m["created"])
	o.Updated, _ = time.Parse(time.RFC3339Nano, m["updated"])
	return o, true, nil
}

func (r *redisSale) left(ctx context.Context) (map[string]int64, error) {
	return r.hashCounts(ctx, r.stockKey(), true)
}

func (r *redisSale) hashCounts(ctx context.Context, key string, keepZero bool) (map[string]int64, error) {
	m, err := r.client.HGetAll(ctx, key).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]int64, len(m))
	for k, v := range m {
		var n int64
		if _, err := fmt.Sscan(v, &n); err != nil {
			return nil, fmt.Errorf("%s field %s: %q: %w", key, k, v, err)
		}
		if n != 0 || keepZero {
			out[k] = n
		}
	}
	return out, nil
}

func (r *redisSale) counts(ctx context.Context) (map[string]int64, map[string]int64, error) {
	all, err := r.hashCounts(ctx, r.countsKey(), false)
	if err != nil {
		return nil, nil, err
	}
	byStatus, paidBy := make(map[string]int64), make(map[string]int64)
	for k, n := range all {
		if p, ok := strings.CutPrefix(k, "paid_by:"); ok {
			paidBy[p] = n
		} else {
			byStatus[k] = n
		}
	}
	return byStatus, paidBy, nil
}

// reset deletes the orders of the previous sale (the prefix is checked to
// hold no glob characters) and sets the stock.
func (r *redisSale) reset(ctx context.Context, stock map[string]int64) error {
	iter := r.client.Scan(ctx, 0, r.prefix+"o:*", 1000).Iterator()
	batch := []string{r.countsKey(), r.stockKey()}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := r.client.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		if err := r.client.Unlink(ctx, batch...).Err(); err != nil {
			return err
		}
	}
	return r.initIfAbsent(ctx, stock)
}

// initIfAbsent sets the stock of each SKU that has none, so that an
// instance joining a sale under way does not refill it.
func (r *redisSale) initIfAbsent(ctx context.Context, stock map[string]int64) error {
	for k, v := range stock {
		if err := r.client.HSetNX(ctx, r.stockKey(), k, v).Err(); err != nil {
			return err
		}
	}
	return nil
}
