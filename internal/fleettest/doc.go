// Package fleettest checks that the Redis-backed features of bulwark behave
// as one across a fleet of separate OS processes, not only across goroutines
// of one process. It holds tests only.
//
// # The harness
//
// Each scenario test starts four worker processes against one Redis and
// checks what they saw together. A worker is the test binary itself, run
// again (os.Executable) with -test.run=^TestFleetWorker$ and an environment
// naming its role (the scenario), its index, the Redis address, the key
// prefix of the test and a common start instant. TestFleetWorker skips
// unless that environment is set; in a worker it does the role's work and
// prints one JSON report on stdout, on a line of its own after a marker. The
// parent parses the reports, computes the figures, logs them and checks
// them.
//
// All instants are on Redis' clock: each process measures its offset from
// Redis' TIME (the reading with the shortest round trip) and records
// instants as nanoseconds since the Unix epoch on that clock, so records of
// different processes compare, on one machine or several. The start instant
// in the environment is the earliest start; workers also meet at a barrier
// in Redis, and the last to arrive moves the start later if it came late,
// so a slow process start shifts the scenario instead of spoiling it.
//
// Workers run under a deadline, the parent kills them when its test ends
// or when one of them fails, and each worker's own TestMain
// (redistest.Main) checks that it leaked no goroutines.
//
// # Correctness and timing
//
// Each scenario checks two kinds of thing. Checks of correctness (nobody
// overtook anybody, one probe per half-open fleet, never more admitted
// than the limit allows) are sound whatever the delays, since they rest on
// the order of events that caused one another, and they fail the test at
// once. Timing targets (a rate within 2%, a latency under 100ms) assume a
// machine that runs the fleet. Every worker watches for the machine
// stalling (a 10ms sleep that oversleeps, a Redis PING that is slow); a
// latency sample taken during such a stall is left out of its percentile
// (both figures are logged, and most samples must be kept), and a run that
// misses a timing target while a stall of 100ms or more was seen runs
// once more. A target missed without such a stall, or twice, fails the
// test.
//
// # Scenarios
//
//   - limiter: four processes hammer one limiter.Redis limit; the fleet
//     admits the rate times the window plus the burst.
//   - queue: four queue.Room instances share a Redis line; nobody overtakes
//     anybody across instances, and the line moves at the configured rate.
//   - breaker: four breakers share a breaker.Fleet; they open together, one
//     instance sends the probe, and all close when it succeeds.
//   - degrade: four switchboards share a degrade.NewRedisStore; a switch
//     flipped on one is seen on the others within milliseconds.
//
// Run them with
//
//	go test -race -count=1 ./internal/fleettest/
//
// Redis is found as for every test of the module (see internal/redistest).
package fleettest
