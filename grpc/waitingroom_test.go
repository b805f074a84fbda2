package bulwarkgrpc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	bulwarkgrpc "github.com/bulwarkgo/bulwark/grpc"
	"github.com/bulwarkgo/bulwark/queue"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
)

func newRoom(t *testing.T, perSecond float64, opts ...queue.RoomOption) *queue.Room {
	t.Helper()
	room, err := queue.NewRoom("flash-sale", perSecond, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { room.Close() })
	return room
}

func newWaitingRoom(t *testing.T, room *queue.Room, opts ...bulwarkgrpc.WaitingRoomOption) *bulwarkgrpc.WaitingRoom {
	t.Helper()
	w, err := bulwarkgrpc.NewWaitingRoom(room, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func lineLength(t *testing.T, room *queue.Room) int {
	st, err := room.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st.Length
}

// gate is a handler that reports each call as it enters and holds it
// until it is let out.
type gate struct {
	entered chan string
	out     chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan string, 100), out: make(chan struct{})} }

func (g *gate) call(ctx context.Context, in string) (string, error) {
	g.entered <- in
	select {
	case <-g.out:
		return in, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func TestWaitingRoomAdmitsInOrderAndFreesSlots(t *testing.T) {
	room := newRoom(t, 1000, queue.WithMaxActive(1))
	w := newWaitingRoom(t, room)
	g := newGate()
	cc := serve(t, &echoServer{call: g.call}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())})

	names := []string{"a", "b", "c", "d", "e"}
	errs := make(chan error, len(names))
	for i, name := range names {
		go func() {
			_, err := call(ctxTimeout(t, 10*time.Second), cc, name)
			errs <- err
		}()
		if i == 0 {
			if got := <-g.entered; got != "a" {
				t.Fatalf("first in: %q", got)
			}
			continue
		}
		// Let each join the line before the next arrives.
		eventually(t, name+" in line", func() bool { return lineLength(t, room) == i })
	}
	for _, want := range names[1:] {
		g.out <- struct{}{} // the call being served ends, freeing the one active slot
		select {
		case got := <-g.entered:
			if got != want {
				t.Fatalf("admitted %q, want %q: the line is first in, first out", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%q was not admitted after a slot was freed", want)
		}
	}
	g.out <- struct{}{}
	for range names {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestWaitingRoomCallerWhoLeavesGivesUpTheirPlace(t *testing.T) {
	room := newRoom(t, 1000, queue.WithMaxActive(1))
	w := newWaitingRoom(t, room)
	g := newGate()
	cc := serve(t, &echoServer{call: g.call}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())})

	first := make(chan error, 1)
	go func() {
		_, err := call(ctxTimeout(t, 10*time.Second), cc, "first")
		first <- err
	}()
	<-g.entered

	ctx, cancel := context.WithCancel(context.Background())
	leaver := make(chan error, 1)
	go func() {
		_, err := call(ctx, cc, "leaver")
		leaver <- err
	}()
	eventually(t, "the leaver in line", func() bool { return lineLength(t, room) == 1 })
	cancel()
	wantCode(t, <-leaver, codes.Canceled)
	eventually(t, "the leaver's place to be given up", func() bool { return lineLength(t, room) == 0 })

	g.out <- struct{}{}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	next := make(chan error, 1)
	go func() {
		_, err := call(ctxTimeout(t, 10*time.Second), cc, "next")
		next <- err
	}()
	if got := <-g.entered; got != "next" {
		t.Fatalf("entered %q, want next", got)
	}
	g.out <- struct{}{}
	if err := <-next; err != nil {
		t.Fatal(err)
	}
}

func TestWaitingRoomRefusals(t *testing.T) {
	t.Run("full", func(t *testing.T) {
		room := newRoom(t, 1000, queue.WithMaxActive(1), queue.WithMaxLength(1))
		w := newWaitingRoom(t, room, bulwarkgrpc.WithRetryAfter(3*time.Second),
			bulwarkgrpc.WithRoomMessage(queue.ErrFull, "排队人数已满"), bulwarkgrpc.WithMessage("请稍后再试"))
		g := newGate()
		cc := serve(t, &echoServer{call: g.call}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())})
		done := make(chan error, 2)
		go func() { _, err := call(ctxTimeout(t, 10*time.Second), cc, "served"); done <- err }()
		<-g.entered
		go func() { _, err := call(ctxTimeout(t, 10*time.Second), cc, "waiting"); done <- err }()
		eventually(t, "a caller in line", func() bool { return lineLength(t, room) == 1 })

		var trailer metadata.MD
		_, err := call(ctxTimeout(t, 10*time.Second), cc, "refused", grpc.Trailer(&trailer))
		st := wantCode(t, err, codes.ResourceExhausted)
		if st.Message() != "排队人数已满" {
			t.Errorf("message %q: WithRoomMessage wins over WithMessage", st.Message())
		}
		info, retry, _ := details(t, st)
		if info.GetReason() != bulwarkgrpc.ReasonQueueFull || info.GetMetadata()["room"] != "flash-sale" {
			t.Errorf("ErrorInfo %v", info)
		}
		if retry.GetRetryDelay().AsDuration() != 3*time.Second {
			t.Errorf("RetryInfo %v, want 3s", retry)
		}
		if got := trailer.Get("grpc-retry-pushback-ms"); len(got) != 1 || got[0] != "3000" {
			t.Errorf("pushback trailer %q", got)
		}
		g.out <- struct{}{}
		<-g.entered
		g.out <- struct{}{}
		for range 2 {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
	})

	t.Run("waited too long", func(t *testing.T) {
		room := newRoom(t, 1000, queue.WithMaxActive(1), queue.WithMaxWait(50*time.Millisecond), queue.WithRejectTooLong(false))
		w := newWaitingRoom(t, room, bulwarkgrpc.WithMessage("请稍后再试"))
		g := newGate()
		cc := serve(t, &echoServer{call: g.call}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())})
		done := make(chan error, 1)
		go func() { _, err := call(ctxTimeout(t, 10*time.Second), cc, "served"); done <- err }()
		<-g.entered
		_, err := call(ctxTimeout(t, 10*time.Second), cc, "too late")
		st := wantCode(t, err, codes.ResourceExhausted)
		if info, retry, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonWaitTimeout ||
			retry.GetRetryDelay().AsDuration() != bulwarkgrpc.DefaultRoomRetryAfter {
			t.Errorf("details %v, %v", info, retry)
		}
		if st.Message() != "请稍后再试" {
			t.Errorf("message %q, want WithMessage's", st.Message())
		}
		g.out <- struct{}{}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	t.Run("wait too long", func(t *testing.T) {
		// One admission every 10s against a maximum wait of 1s: the second
		// caller's estimated wait is already too long.
		room := newRoom(t, 0.1, queue.WithMaxWait(time.Second))
		w := newWaitingRoom(t, room)
		cc := serve(t, &echoServer{}, []grpc.ServerOption{grpc.UnaryInterceptor(w.Unary())})
		if _, err := call(ctxTimeout(t, 10*time.Second), cc, "first"); err != nil {
			t.Fatal(err)
		}
		_, err := call(ctxTimeout(t, 10*time.Second), cc, "second")
		st := wantCode(t, err, codes.ResourceExhausted)
		if info, _, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonWaitTooLong {
			t.Errorf("ErrorInfo %v", info)
		}
		if !strings.Contains(st.Message(), "too long") {
			t.Errorf("message %q, want the default for a long wait", st.Message())
		}
	})

	t.Run("closed", func(t *testing.T) {
		room := newRoom(t, 1000)
		w := newWaitingRoom(t, room)
		s := &echoServer{}
		cc := serve(t, s, []grpc.ServerOption{grpc.StreamInterceptor(w.Stream())})
		room.Close()
		_, err := chat(ctxTimeout(t, 10*time.Second), cc, "hi")
		st := wantCode(t, err, codes.Unavailable)
		if info, retry, _ := details(t, st); info.GetReason() != bulwarkgrpc.ReasonQueueUnavailable || retry == nil {
			t.Errorf("details %v, %v", info, retry)
		}
		if n := s.calls.Load(); n != 0 {
			t.Errorf("handler called %d times", n)
		}
	})
}

func TestWaitingRoomStream(t *testing.T) {
	room := newRoom(t, 1000, queue.WithMaxActive(1))
	w := newWaitingRoom(t, room)
	cc := serve(t, &echoServer{}, []grpc.ServerOption{grpc.StreamInterceptor(w.Stream())})

	first, err := chat(ctxTimeout(t, 10*time.Second), cc, "first")
	if err != nil {
		t.Fatal(err)
	}
	second := make(chan error, 1)
	var cs grpc.ClientStream
	go func() {
		var err error
		cs, err = chat(ctxTimeout(t, 10*time.Second), cc, "second")
		second <- err
	}()
	eventually(t, "the second stream in line", func() bool { return lineLength(t, room) == 1 })
	select {
	case err := <-second:
		t.Fatalf("the second stream got through while the first held the slot: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	closeChat(t, first) // ends the first stream's admission
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	closeChat(t, cs)
}

func TestNewWaitingRoomValidates(t *testing.T) {
	room := newRoom(t, 10)
	for _, tc := range []struct {
		name    string
		room    *queue.Room
		opts    []bulwarkgrpc.WaitingRoomOption
		mention string
	}{
		{"nil room", nil, nil, "room"},
		{"zero retry", room, []bulwarkgrpc.WaitingRoomOption{bulwarkgrpc.WithRetryAfter(0)}, "WithRetryAfter"},
		{"negative margin", room, []bulwarkgrpc.WaitingRoomOption{bulwarkgrpc.WithDeadlineMargin(-time.Millisecond)}, "WithDeadlineMargin"},
		{"other error", room, []bulwarkgrpc.WaitingRoomOption{bulwarkgrpc.WithRoomMessage(errTest, "x")}, "WithRoomMessage"},
		{"nil filter", room, []bulwarkgrpc.WaitingRoomOption{bulwarkgrpc.WithFilter(nil)}, "WithFilter"},
		{"nil option", room, []bulwarkgrpc.WaitingRoomOption{nil}, "opts[0]"},
	} {
		_, err := bulwarkgrpc.NewWaitingRoom(tc.room, tc.opts...)
		if !errors.Is(err, bulwarkgrpc.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want ErrInvalidConfig naming %s", tc.name, err, tc.mention)
		}
	}
}
