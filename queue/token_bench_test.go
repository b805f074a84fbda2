package queue_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
)

func BenchmarkSignerIssue(b *testing.B) {
	s := newTestSigner(b, tokenKey(1))
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s.Issue(tokenRoom, tokenTicket, tokenT0)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.Issue(tokenRoom, tokenTicket, tokenT0)
			}
		})
	})
}

// BenchmarkSignerCheck checks a good token, one signed with the second of
// two previous keys (three MACs), and a forgery (three MACs, then refused).
func BenchmarkSignerCheck(b *testing.B) {
	s := newTestSigner(b, tokenKey(1), queue.WithPreviousKeys(tokenKey(2), tokenKey(3)))
	for _, tc := range []struct{ name, token string }{
		{"current-key", s.Issue(tokenRoom, tokenTicket, tokenT0)},
		{"third-key", newTestSigner(b, tokenKey(3)).Issue(tokenRoom, tokenTicket, tokenT0)},
		{"forged", newTestSigner(b, tokenKey(4)).Issue(tokenRoom, tokenTicket, tokenT0)},
	} {
		b.Run(tc.name+"/serial", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_, _ = s.Check(tokenRoom, tc.token, tokenT0)
			}
		})
		b.Run(tc.name+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = s.Check(tokenRoom, tc.token, tokenT0)
				}
			})
		})
	}
}

// BenchmarkMemoryReplayGuardUse records a new id each time. Each is kept
// a millisecond, so some thousands are live at once and a Use also forgets
// about one expired id.
func BenchmarkMemoryReplayGuardUse(b *testing.B) {
	g, err := queue.NewMemoryReplayGuard(1 << 20)
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = "id-" + strconv.Itoa(i)
	}
	ctx := context.Background()
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		// An id comes round again after 65,536 calls, long after it has
		// expired, so every Use is a first use.
		_, _ = g.Use(ctx, ids[i&(len(ids)-1)], time.Now().Add(time.Millisecond))
		i++
	}
}
