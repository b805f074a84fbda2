package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/bulwarkgo/bulwark/queue"
	"github.com/redis/go-redis/v9"
)

// A room admits at a set rate, in joining order; Wait holds the caller
// until its turn.
func ExampleRoom_Wait() {
	room, err := queue.NewRoom("flash-sale", 1000, queue.WithMaxWait(30*time.Second))
	if err != nil {
		panic(err)
	}
	defer room.Close()

	a, err := room.Wait(context.Background())
	switch {
	case errors.Is(err, queue.ErrFull), errors.Is(err, queue.ErrWaitTooLong):
		fmt.Println("sold out of patience: try again later")
		return
	case err != nil:
		fmt.Println("gave up:", err)
		return
	}
	defer a.Done()
	fmt.Println("admitted")
	// Output: admitted
}

// Clients that cannot hold a connection take a ticket and poll.
func ExampleRoom_Join() {
	room, err := queue.NewRoom("flash-sale", 1)
	if err != nil {
		panic(err)
	}
	defer room.Close()
	ctx := context.Background()

	first, _ := room.Join(ctx)
	second, _ := room.Join(ctx)
	fmt.Println("first admitted:", first.Admitted)
	fmt.Println("second position:", second.Position)

	// The client polls Status every PollAfter until it is admitted.
	s, _ := room.Status(ctx, second.ID)
	fmt.Println("second admitted yet:", s.Admitted)
	// Output:
	// first admitted: true
	// second position: 1
	// second admitted yet: false
}

// In ticket mode, the protected endpoint hands out tickets and serves those
// whose turn has come; the status endpoint answers polls with the place in
// line and, in turn, a signed admission token.
func ExampleTicketMiddleware() {
	signer, err := queue.NewSigner([]byte("a key of at least thirty-two bytes!!"))
	if err != nil {
		panic(err)
	}
	room, err := queue.NewRoom("flash-sale", 500, queue.WithSigner(signer), queue.WithMaxActive(200))
	if err != nil {
		panic(err)
	}
	defer room.Close()

	checkout := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := queue.AdmissionFromContext(r.Context())
		fmt.Fprintln(w, "order placed for ticket", claims.Ticket)
	})
	mux := http.NewServeMux()
	mux.Handle("POST /checkout", queue.TicketMiddleware(room)(checkout))
	mux.Handle("/queue", queue.StatusHandler(room))
	_ = http.ListenAndServe("127.0.0.1:8080", mux)
}

// Every instance of a service that uses the same room name on the same
// Redis shares one line.
func ExampleWithRedis() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	room, err := queue.NewRoom("flash-sale", 1000, queue.WithRedis(client), queue.WithMaxActive(500))
	if err != nil {
		panic(err)
	}
	defer room.Close()
	a, err := room.Wait(context.Background())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer a.Done()
}
