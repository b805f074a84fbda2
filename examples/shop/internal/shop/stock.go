package shop

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/redis/go-redis/v9"
)

// errSoldOut means an item has no stock left.
var errSoldOut = errors.New("sold out")

// stock keeps the units left of each flash-sale item. take never lets a
// count go below zero, however many buyers race for the last unit.
type stock interface {
	// take removes one unit of sku, or fails with errSoldOut.
	take(ctx context.Context, sku string) error
	// giveBack returns a unit taken for an order that did not go through.
	giveBack(ctx context.Context, sku string) error
	// left reports the units left of each SKU.
	left(ctx context.Context) (map[string]int64, error)
	// reset sets the stock of each SKU, starting a new sale.
	reset(ctx context.Context, initial map[string]int64) error
}

type memoryStock struct {
	mu    sync.Mutex
	units map[string]int64
}

func newMemoryStock(initial map[string]int64) *memoryStock {
	s := &memoryStock{}
	_ = s.reset(context.Background(), initial)
	return s
}

func (s *memoryStock) take(_ context.Context, sku string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.units[sku] <= 0 {
		return errSoldOut
	}
	s.units[sku]--
	return nil
}

func (s *memoryStock) giveBack(_ context.Context, sku string) error {
	s.mu.Lock()
	s.units[sku]++
	s.mu.Unlock()
	return nil
}

func (s *memoryStock) left(context.Context) (map[string]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[string]int64, len(s.units))
	for k, v := range s.units {
		m[k] = v
	}
	return m, nil
}

func (s *memoryStock) reset(_ context.Context, initial map[string]int64) error {
	s.mu.Lock()
	s.units = make(map[string]int64, len(initial))
	for k, v := range initial {
		s.units[k] = v
	}
	s.mu.Unlock()
	return nil
}

// redisStock keeps the stock in one hash, field per SKU, so every instance
// sells from the same units. A script takes a unit only while the count
// is positive: DECR alone would go below zero under a race and need
// undoing.
type redisStock struct {
	client redis.UniversalClient
	key    string
	skus   []string
}

// takeScript: KEYS[1] the stock hash, ARGV[1] the SKU. Returns the units
// left, or -1 when there were none.
var takeScript = redis.NewScript(`
local n = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if n <= 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
`)

func (s *redisStock) take(ctx context.Context, sku string) error {
	n, err := takeScript.Run(ctx, s.client, []string{s.key}, sku).Int64()
	if err != nil {
		return fmt.Errorf("stock: %w", err)
	}
	if n < 0 {
		return errSoldOut
	}
	return nil
}

func (s *redisStock) giveBack(ctx context.Context, sku string) error {
	return s.client.HIncrBy(ctx, s.key, sku, 1).Err()
}

func (s *redisStock) left(ctx context.Context) (map[string]int64, error) {
	vals, err := s.client.HMGet(ctx, s.key, s.skus...).Result()
	if err != nil {
		return nil, err
	}
	m := make(map[string]int64, len(s.skus))
	for i, v := range vals {
		var n int64
		if str, ok := v.(string); ok {
			if _, err := fmt.Sscan(str, &n); err != nil {
				return nil, fmt.Errorf("stock of %s: %q: %w", s.skus[i], str, err)
			}
		}
		m[s.skus[i]] = n
	}
	return m, nil
}

func (s *redisStock) reset(ctx context.Context, initial map[string]int64) error {
	vals := make([]any, 0, 2*len(initial))
	for k, v := range initial {
		vals = append(vals, k, v)
	}
	_, err := s.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.key)
		p.HSet(ctx, s.key, vals...)
		return nil
	})
	return err
}

// initIfAbsent sets the stock unless a sale is already under way, so that
// a second instance joining the fleet does not refill it.
func (s *redisStock) initIfAbsent(ctx context.Context, initial map[string]int64) error {
	for k, v := range initial {
		if err := s.client.HSetNX(ctx, s.key, k, v).Err(); err != nil {
			return err
		}
	}
	return nil
}
