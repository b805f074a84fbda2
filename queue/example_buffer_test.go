package queue_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/breaker"
	"github.com/bulwarkgo/bulwark/queue"
)

// An order is accepted once, even if the client submits it twice, and is
// charged on the second attempt after the payment gateway times out on the
// first. The memory store keeps the example self-contained; it is not
// durable.
func ExampleBuffer() {
	store, err := queue.NewMemoryStore("orders")
	if err != nil {
		log.Fatal(err)
	}
	orders, err := queue.NewBuffer(store,
		queue.WithBackoff(10*time.Millisecond, time.Second),
		queue.WithBufferPollInterval(10*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()

	ctx := context.Background()
	first, _ := orders.Enqueue(ctx, "order-1001", []byte(`{"amount":4200}`))
	again, _ := orders.Enqueue(ctx, "order-1001", []byte(`{"amount":4200}`))
	fmt.Println("second submission is a duplicate:", again.Duplicate, again.ID == first.ID)

	charged := make(chan struct{})
	go orders.Run(ctx, func(ctx context.Context, m queue.Message) error {
		if m.Attempt == 1 {
			return errors.New("payment gateway timeout")
		}
		fmt.Printf("charged %s %s on attempt %d (last error: %s)\n", m.Key, m.Body, m.Attempt, m.LastError)
		close(charged)
		return nil
	})
	<-charged
	// Output:
	// second submission is a duplicate: true true
	// charged order-1001 {"amount":4200} on attempt 2 (last error: payment gateway timeout)
}

// An order that fails every attempt becomes a dead letter with its last
// error; once the cause is fixed, Redrive gives it a new round.
func ExampleBuffer_Redrive() {
	store, err := queue.NewMemoryStore("orders")
	if err != nil {
		log.Fatal(err)
	}
	orders, err := queue.NewBuffer(store,
		queue.WithMaxAttempts(2),
		queue.WithBackoff(10*time.Millisecond, time.Second),
		queue.WithBufferPollInterval(10*time.Millisecond))
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()

	ctx := context.Background()
	if _, err := orders.Enqueue(ctx, "order-7", []byte("card expired")); err != nil {
		log.Fatal(err)
	}
	fixed := make(chan bool, 1)
	fixed <- false
	charged := make(chan string)
	go orders.Run(ctx, func(ctx context.Context, m queue.Message) error {
		ok := <-fixed
		fixed <- ok
		if !ok {
			return fmt.Errorf("card declined (attempt %d)", m.Attempt)
		}
		charged <- fmt.Sprint("charged ", m.Key, " on attempt ", m.Attempt)
		return nil
	})

	for {
		dead, err := orders.DeadLetters(ctx, 10)
		if err != nil {
			log.Fatal(err)
		}
		if len(dead) > 0 {
			fmt.Printf("dead letter: %s after %d attempts: %s\n", dead[0].Key, dead[0].Attempt, dead[0].LastError)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-fixed
	fixed <- true // the customer updated the card
	n, err := orders.Redrive(ctx, 10)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("redriven:", n)
	fmt.Println(<-charged)
	// Output:
	// dead letter: order-7 after 2 attempts: card declined (attempt 2)
	// redriven: 1
	// charged order-7 on attempt 1
}

// chargeCard stands for the call to the payment provider.
func chargeCard(ctx context.Context, m queue.Message) (string, error) {
	return "receipt-" + m.ID, nil
}

// A flash sale: the order endpoint accepts an order once it is safe in
// Redis, and a worker charges it. While the payment provider's breaker is
// open the worker holds the orders instead of burning their attempts, and
// drains them when the provider recovers.
func ExampleNewRedisStore() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	store, err := queue.NewRedisStore(client, "orders")
	if err != nil {
		log.Fatal(err)
	}
	payments := breaker.New[string]("payments")
	orders, err := queue.NewBuffer(store,
		queue.WithGate(payments), // ready unless the breaker is open
		queue.WithDeferIf(func(err error) bool { return errors.Is(err, breaker.ErrOpen) }),
		queue.WithMaxDepth(1_000_000),
		queue.WithConcurrency(16),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()

	// In the order endpoint:
	accepted, err := orders.Enqueue(context.Background(), "order-1001", []byte(`{"amount":4200}`))
	switch {
	case errors.Is(err, queue.ErrFull):
		fmt.Println("sold out for now, try again later") // 503
	case err != nil:
		fmt.Println("cannot take orders:", err) // Redis is down: 503
	default:
		fmt.Println("order accepted:", accepted.ID) // 202
	}

	// In the worker: stop on Ctrl-C, letting charges in progress finish.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err = orders.Run(ctx, func(ctx context.Context, m queue.Message) error {
		_, err := payments.Execute(ctx, func(ctx context.Context) (string, error) {
			return chargeCard(ctx, m)
		})
		return err
	})
	fmt.Println("worker stopped:", err)
}
