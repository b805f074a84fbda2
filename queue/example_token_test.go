package queue_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/queue"
)

// A user at the front of the line gets a token; the checkout endpoint
// redeems it once. A second use, or the token shown to another room, is
// refused.
func ExampleSigner() {
	// In production the key comes from your secret store, shared by every
	// instance, so any of them can verify what another issued.
	key := make([]byte, 32)
	rand.Read(key)
	signer, err := queue.NewSigner(key)
	if err != nil {
		log.Fatal(err)
	}

	// In the room, when ticket 1234-9f8e7d6c5b4a3921 is admitted:
	token := signer.Issue("flash-sale", "1234-9f8e7d6c5b4a3921", time.Now())

	// At checkout:
	ctx := context.Background()
	claims, err := signer.Redeem(ctx, "flash-sale", token)
	fmt.Println(claims.Ticket, err)

	_, err = signer.Redeem(ctx, "flash-sale", token)
	fmt.Println(errors.Is(err, queue.ErrTokenReplayed))

	_, err = signer.Check("another-sale", token, time.Now())
	fmt.Println(errors.Is(err, queue.ErrTokenInvalid))
	// Output:
	// 1234-9f8e7d6c5b4a3921 <nil>
	// true
	// true
}

// Check takes the time as an argument, so a token's life can be shown (or
// tested) without waiting.
func ExampleSigner_Check() {
	signer, err := queue.NewSigner([]byte("an example key of 32 bytes or more"), queue.WithTokenTTL(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	issued := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	token := signer.Issue("flash-sale", "1234-9f8e7d6c5b4a3921", issued)

	for _, after := range []time.Duration{59 * time.Second, time.Minute} {
		claims, err := signer.Check("flash-sale", token, issued.Add(after))
		fmt.Printf("after %v: expires %s, %v\n", after, claims.ExpiresAt.UTC().Format(time.TimeOnly), err)
	}
	// Output:
	// after 59s: expires 12:01:00, <nil>
	// after 1m0s: expires 12:01:00, queue: admission token expired
}

// Rotating the key: tokens signed with the old key stay good while it is
// among the previous keys.
func ExampleWithPreviousKeys() {
	oldKey := []byte("the old key, at least 32 bytes long")
	newKey := []byte("the new key, at least 32 bytes long")
	before, _ := queue.NewSigner(oldKey)
	token := before.Issue("flash-sale", "1234-9f8e7d6c5b4a3921", time.Now())

	after, err := queue.NewSigner(newKey, queue.WithPreviousKeys(oldKey))
	if err != nil {
		log.Fatal(err)
	}
	_, err = after.Check("flash-sale", token, time.Now())
	fmt.Println(err)
	// Output:
	// <nil>
}

// With more than one instance, tokens are recorded in Redis so each is
// redeemed once across the fleet. While Redis is down, Redeem refuses every
// token with an error matching queue.ErrUnavailable.
func ExampleNewRedisReplayGuard() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	guard, err := queue.NewRedisReplayGuard(client, "bulwark:queue:used:")
	if err != nil {
		log.Fatal(err)
	}
	key := make([]byte, 32) // from your secret store
	signer, err := queue.NewSigner(key, queue.WithReplayGuard(guard))
	if err != nil {
		log.Fatal(err)
	}

	token := signer.Issue("flash-sale", "1234-9f8e7d6c5b4a3921", time.Now())
	switch _, err := signer.Redeem(context.Background(), "flash-sale", token); {
	case errors.Is(err, queue.ErrUnavailable):
		fmt.Println("try again shortly") // 503
	case err != nil:
		fmt.Println("not admitted:", err) // 403
	default:
		fmt.Println("admitted")
	}
}
