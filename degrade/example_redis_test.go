package degrade_test

import (
	"context"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bulwarkgo/bulwark/degrade"
)

// Every instance of the shop shares its switches through Redis: an
// operator's change on any instance reaches the others within milliseconds,
// and each keeps deciding from the last state it knew while Redis is down.
func ExampleNewRedisStore() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()

	store, err := degrade.NewRedisStore(client, degrade.WithRedisName("shop"))
	if err != nil {
		log.Fatal(err)
	}
	sb, err := degrade.New([]degrade.Feature{
		{Name: "checkout", Level: degrade.Core},
		{Name: "map-navigation", Level: degrade.Important},
		{Name: "recommendations", Level: degrade.Optional},
	}, degrade.WithStore(store), degrade.WithRefresh(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer sb.Close()

	ctx := context.Background()
	// 大促: shed everything below core on every instance.
	if err := sb.Shed(ctx, degrade.Important, degrade.Change{By: "alice", Reason: "Singles' Day peak"}); err != nil {
		log.Print(err) // errors.Is(err, degrade.ErrUnavailable) while Redis is down
	}
	if !sb.Enabled(ctx, "recommendations") {
		// Render the page without recommendations.
	}
	if !sb.StoreHealthy() {
		log.Print("degrade: Redis unreachable, deciding from the last known state")
	}
}
