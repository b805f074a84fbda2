package benchmarks

import (
	"bufio"
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	zlimit "github.com/zeromicro/go-zero/core/limit"
	zstat "github.com/zeromicro/go-zero/core/stat"
	zredis "github.com/zeromicro/go-zero/core/stores/redis"

	"github.com/bulwarkgo/bulwark/internal/redistest"
	"github.com/bulwarkgo/bulwark/limiter"
)

const (
	// redisGoroutines is the number of callers deciding at once: a busy
	// service instance, enough to keep Redis saturated so throughput is set
	// by the server and the round trip, not by the client.
	redisGoroutines = 64

	// redisKeys is the number of keys each run spreads its calls over,
	// every goroutine walking all of them round-robin from its own start.
	// One hot key would serialise every script on one slot of state and
	// favour whichever library's script is shortest; one key per call
	// would measure key creation. A thousand keys is a realistic per-user
	// or per-client working set whose buckets stay warm during the run.
	redisKeys = 1000

	// redisRate is events per second per key, with an equal burst: far
	// above what one key sees here (throughput / redisKeys), so every
	// decision is allowed. go-zero derives its key TTL as 2·burst/rate
	// seconds, rounded down, so burst must not be below rate/2.
	redisRate = 1_000_000
)

// redisEnv is what a library needs to build its limiter for one run.
type redisEnv struct {
	addr   string
	client *redis.Client
	prefix string   // unique to the run, so runs never see each other's keys
	keys   []string // redisKeys unprefixed keys
}

// prefixed returns the run's keys with its prefix, for libraries that
// take a full key.
func (e redisEnv) prefixed() []string {
	pk := make([]string, len(e.keys))
	for i, k := range e.keys {
		pk[i] = e.prefix + k
	}
	return pk
}

// redisAllow decides for the i-th key of the run.
type redisAllow func(ctx context.Context, i int) (bool, error)

type redisLib struct {
	name string
	// script is set for the libraries that decide in a Lua script; for
	// them the server's script time is reported.
	script bool
	// perDecision is set for the libraries that make exactly one script
	// call per decision; the run then checks that the server saw at least
	// as many script calls as there were decisions. go-zero answers from
	// an in-process limiter when Redis fails and reports no error, so
	// without this check a failing Redis would look fast.
	perDecision bool
	build       func(b *testing.B, env redisEnv) redisAllow
}

// bulwarkRedis builds Bulwark's Redis limiter. FailClosed makes a Redis
// failure visible to the run as refusals, which fail it; the default policy
// would answer from a local fallback instead. The policy plays no part while
// Redis answers.
func bulwarkRedis(opts ...limiter.RedisOption) func(b *testing.B, env redisEnv) redisAllow {
	return func(b *testing.B, env redisEnv) redisAllow {
		opts := append([]limiter.RedisOption{limiter.WithPrefix(env.prefix), limiter.WithOutagePolicy(limiter.FailClosed)}, opts...)
		lim, err := limiter.NewRedis(env.client, limiter.PerSecond(redisRate, redisRate), opts...)
		if err != nil {
			b.Fatal(err)
		}
		return func(ctx context.Context, i int) (bool, error) {
			d, err := lim.Allow(ctx, env.keys[i])
			return d.Allowed, err
		}
	}
}

var redisLibs = []redisLib{
	// By default Bulwark coalesces concurrent decisions into shared script
	// calls (up to 64 per call), so it makes fewer calls than decisions.
	{"bulwark-redis", true, false, bulwarkRedis()},
	// One script call per decision, like the peers: the script's own cost
	// compared like for like.
	{"bulwark-redis-unbatched", true, true, bulwarkRedis(limiter.WithMaxBatch(1))},
	{"redis_rate", true, true, func(b *testing.B, env redisEnv) redisAllow {
		lim := redis_rate.NewLimiter(env.client)
		limit := redis_rate.PerSecond(redisRate) // burst = rate
		keys := env.prefixed()
		return func(ctx context.Context, i int) (bool, error) {
			res, err := lim.Allow(ctx, keys[i], limit)
			if err != nil {
				return false, err
			}
			return res.Allowed > 0, nil
		}
	}},
	{"go-zero", true, true, func(b *testing.B, env redisEnv) redisAllow {
		// go-zero takes no client from the caller: its Redis wraps a
		// go-redis client that it creates, shares by address for the life
		// of the process and never closes, with its breaker and metrics
		// hooks installed. Its pool size is go-redis' default, the same as
		// the other libraries' client here.
		//
		// Its breaker counts every Redis error reply as a failure. On a
		// server older than 7.2 each new connection's CLIENT SETINFO fails,
		// so a cold client with many callers trips the breaker before its
		// first decision; DisableIdentity (a RedisConf field) is how a
		// go-zero user avoids that.
		store, err := zredis.NewRedis(zredis.RedisConf{Host: env.addr, Type: zredis.NodeType, DisableIdentity: true})
		if err != nil {
			b.Fatal(err)
		}
		// A TokenLimiter is bound to one key, so a key set needs one each.
		// AllowCtx reports only a bool: a Redis error is logged and
		// answered by an in-process fallback, so a failing Redis would
		// look fast here. The script-call check in benchRedis catches it.
		lims := make([]*zlimit.TokenLimiter, len(env.keys))
		for i, k := range env.prefixed() {
			lims[i] = zlimit.NewTokenLimiter(redisRate, redisRate, store, k)
		}
		// One call alone first: the script's first EVALSHA on a server
		// that has not seen it fails with NOSCRIPT, another error for the
		// breaker; alone, it is one failure among the warm-up's successes.
		if !lims[0].AllowCtx(context.Background()) {
			b.Fatal("go-zero: first decision refused")
		}
		return func(ctx context.Context, i int) (bool, error) {
			return lims[i].AllowCtx(ctx), nil
		}
	}},
	{"incr", false, false, func(b *testing.B, env redisEnv) redisAllow {
		// The floor: one command, one round trip, no script. A fixed
		// window counter without its EXPIRE; the run deletes its keys.
		keys := env.prefixed()
		return func(ctx context.Context, i int) (bool, error) {
			n, err := env.client.Incr(ctx, keys[i]).Result()
			return n > 0, err
		}
	}},
}

// BenchmarkRedisAllow measures allowed decisions against a real Redis from
// redisGoroutines callers at once over redisKeys keys. ns/op is wall time
// per decision across all callers, so decisions/s is its inverse; it is
// reported for readability. lua-µs/call is the server's own time per script
// call, from INFO commandstats, so it separates script cost from the round
// trip and client overhead.
//
// keys=1000 is a per-user limit; keys=1 one global limit that every caller
// shares, where Bulwark decides the concurrent calls of a batch on one
// bucket with one read and one write.
func BenchmarkRedisAllow(b *testing.B) {
	procs := runtime.GOMAXPROCS(0)
	parallelism := (redisGoroutines + procs - 1) / procs
	for _, n := range []int{redisKeys, 1} {
		keys := makeKeys(n)
		for _, lib := range redisLibs {
			b.Run("keys="+strconv.Itoa(n)+"/lib="+lib.name, func(b *testing.B) {
				benchRedis(b, lib, keys, parallelism)
			})
		}
	}
}

func benchRedis(b *testing.B, lib redisLib, keys []string, parallelism int) {
	ctx := context.Background()
	addr := redistest.Addr(b)
	// Pool options are go-redis defaults (10 connections per GOMAXPROCS),
	// which is also what go-zero's own client uses.
	client := redistest.NewClient(b, addr)
	env := redisEnv{addr: addr, client: client, prefix: redistest.Prefix(b), keys: keys}
	b.Cleanup(func() { deleteKeys(b, client, env.prefix) })

	allow := lib.build(b, env)
	warmRedis(b, allow, parallelism, len(keys))

	before := readScriptStats(b, client)
	var t tally
	s := spread{n: len(keys)}
	b.SetParallelism(parallelism)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c := s.cursor()
		var got counts
		for pb.Next() {
			got.note(allow(ctx, c.next()))
		}
		t.add(got)
	})
	b.StopTimer()
	after := readScriptStats(b, client)

	t.check(b, "allowed")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
	if lib.script {
		calls, usec := after.calls-before.calls, after.usec-before.usec
		// Other clients of the server only add calls, so fewer calls than
		// decisions means the library decided without its script.
		if lib.perDecision && calls < int64(b.N) {
			b.Errorf("%d script calls for %d decisions: the library did not decide in Redis", calls, b.N)
		}
		if calls > 0 {
			b.ReportMetric(float64(usec)/float64(calls), "lua-µs/call")
		}
		// Per decision, so a library that decides several keys in one
		// call compares fairly with one that does not.
		b.ReportMetric(float64(usec)/float64(b.N), "lua-µs/decision")
	}
}

// warmRedis makes one call from each of the run's goroutines before the
// timer starts, so the connection pool is full and the script is loaded
// (the first EVALSHA of a script a server has not seen falls back to EVAL).
func warmRedis(b *testing.B, allow redisAllow, parallelism, keys int) {
	b.Helper()
	n := parallelism * runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	var t tally
	for g := range n {
		wg.Go(func() {
			var got counts
			got.note(allow(context.Background(), g%keys))
			t.add(got)
		})
	}
	wg.Wait()
	if err := t.firstErr.Load(); err != nil {
		b.Fatalf("warm-up: %v", *err)
	}
}

// scriptStats is the server-wide count and total time of script calls.
type scriptStats struct {
	calls, usec int64
}

// readScriptStats sums the EVAL and EVALSHA lines of INFO commandstats.
// The counters are server-wide and never reset here (CONFIG RESETSTAT
// would disturb whoever else uses the server); a run uses the difference.
func readScriptStats(b *testing.B, client *redis.Client) scriptStats {
	b.Helper()
	info, err := client.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	s, err := parseScriptStats(info)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// parseScriptStats reads lines such as
//
//	cmdstat_evalsha:calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0
func parseScriptStats(info string) (scriptStats, error) {
	var s scriptStats
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		name, fields, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":")
		if !ok || (name != "cmdstat_eval" && name != "cmdstat_evalsha") {
			continue
		}
		for f := range strings.SplitSeq(fields, ",") {
			k, v, _ := strings.Cut(f, "=")
			var dst *int64
			switch k {
			case "calls":
				dst = &s.calls
			case "usec":
				dst = &s.usec
			default:
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return s, fmt.Errorf("commandstats %s %s: %w", name, k, err)
			}
			*dst += n
		}
	}
	return s, sc.Err()
}

// deleteKeys removes every key containing prefix. Libraries put a prefix
// in different places (redis_rate adds "rate:" in front, hash tags wrap
// it), so the pattern matches it anywhere.
func deleteKeys(b *testing.B, client *redis.Client, prefix string) {
	ctx := context.Background()
	iter := client.Scan(ctx, 0, "*"+globEscape(prefix)+"*", 1000).Iterator()
	var batch []string
	flush := func() {
		if len(batch) > 0 {
			if err := client.Unlink(ctx, batch...).Err(); err != nil {
				b.Errorf("cleaning up keys of %s: %v", prefix, err)
			}
			batch = batch[:0]
		}
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			flush()
		}
	}
	flush()
	if err := iter.Err(); err != nil {
		b.Errorf("scanning keys of %s: %v", prefix, err)
	}
}

func globEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// quietPeers stops go-zero's once-a-minute resource report, which would
// otherwise print into the benchmark output of long runs. Its error logs
// stay on: they are how a failing Redis shows up for go-zero.
func quietPeers() { zstat.DisableLog() }
