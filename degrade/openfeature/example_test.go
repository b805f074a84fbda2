package openfeature_test

import (
	"context"
	"fmt"

	"github.com/bulwarkgo/bulwark/degrade"
	bof "github.com/bulwarkgo/bulwark/degrade/openfeature"
	of "github.com/open-feature/go-sdk/openfeature"
	"github.com/open-feature/go-sdk/openfeature/isolated"
)

// A service that reads its flags through OpenFeature gets Bulwark's
// switches, with the reason and the user-facing message.
func Example() {
	ctx := context.Background()
	sb, err := degrade.New([]degrade.Feature{
		{Name: "recommendations", Level: degrade.Optional, Messages: map[string]string{"": "Recommendations are resting."}},
	})
	if err != nil {
		panic(err)
	}
	defer sb.Close()

	api := isolated.NewAPI() // or the global API: of.SetProviderAndWait
	defer api.Shutdown(ctx)
	if err := api.SetProviderAndWait(ctx, bof.NewProvider(sb)); err != nil {
		panic(err)
	}
	client := api.NewClient()
	user := of.NewEvaluationContext("user-42", map[string]any{"platform": "ios", "appVersion": "3.2.0"})

	on, _ := client.BooleanValue(ctx, "recommendations", false, user)
	fmt.Println("recommendations:", on)

	// Under load, optional features are shed.
	_ = sb.Shed(ctx, degrade.Optional, degrade.Change{By: "oncall", Reason: "noon peak"})
	d, _ := client.BooleanValueDetails(ctx, "recommendations", true, user)
	msg, _ := d.FlagMetadata.GetString("message")
	fmt.Println("recommendations:", d.Value, d.Reason, msg)
	// Output:
	// recommendations: true
	// recommendations: false DISABLED Recommendations are resting.
}
