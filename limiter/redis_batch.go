package limiter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/bulwarkgo/bulwark/internal/batch"
)

// maxInflight is how many script calls one Redis limiter keeps on the wire
// at once before concurrent decisions start to share calls. Below it every
// decision is sent at once, so a lightly loaded limiter adds no waiting.
const maxInflight = 4

// call is one decision on its way through the batcher.
type call struct {
	batch.Member[*call]
	key      string // full Redis key
	n        int
	deadline time.Time // of the caller's context; zero if none
	behind   int64     // the script's reply: µs the bucket was from full
	err      error
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// newBatcher returns the batcher through which r's decisions share script
// calls, up to maxBatch decisions a call. Under load a decision waits for
// the round trips ahead of it in line (one, until more than maxInflight
// batches of callers wait), and the number of script calls falls as load
// rises.
func (r *Redis) newBatcher(maxBatch int) *batch.Batcher[*call] {
	return &batch.Batcher[*call]{
		MaxInflight: maxInflight,
		MaxBatch:    maxBatch,
		Send:        r.sendBatch,
		Fail: func(calls []*call, panicked any) {
			err := fmt.Errorf("limiter: panic during the Redis call: %v", panicked)
			for _, c := range calls {
				c.err = err
			}
		},
	}
}

// sendBatch runs a batch for the batcher, whose context carries the
// leader's values but no deadline (see batch.Batcher.Send). It bounds the
// call by the latest of its callers' deadlines: with a client that has
// ContextTimeoutEnabled, a stalled Redis then holds no batch past the
// moment every one of its callers has given up, and a lone caller is held
// no longer than its own deadline. A caller without a deadline leaves the
// call to the client's ReadTimeout, as before.
func (r *Redis) sendBatch(ctx context.Context, calls []*call) {
	var latest time.Time
	for _, c := range calls {
		if c.deadline.IsZero() {
			r.evalBatch(ctx, calls)
			return
		}
		if c.deadline.After(latest) {
			latest = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(ctx, latest)
	defer cancel()
	r.evalBatch(ctx, calls)
}
