package degrade_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/bulwarkgo/bulwark/degrade"
)

func Example() {
	sb, err := degrade.New([]degrade.Feature{
		{Name: "checkout", Level: degrade.Core},
		{Name: "recommendations", Level: degrade.Optional, Messages: map[string]string{
			"zh": "推荐暂时不可用", "en": "Recommendations are unavailable for now.",
		}},
	})
	if err != nil {
		panic(err)
	}
	defer sb.Close()
	ctx := degrade.WithAttributes(context.Background(), degrade.Attributes{Locale: "zh-CN"})

	fmt.Println("recommendations:", sb.Enabled(ctx, "recommendations"))

	// The reviews database is down: an operator turns recommendations off.
	_ = sb.Set(ctx, "recommendations", degrade.State{Mode: degrade.Off},
		degrade.Change{By: "alice", Reason: "reviews DB down"})

	if err := sb.Check(ctx, "recommendations"); errors.Is(err, degrade.ErrDegraded) {
		var de *degrade.DegradedError
		errors.As(err, &de)
		fmt.Println("recommendations:", de.Message)
	}
	fmt.Println("checkout:", sb.Enabled(ctx, "checkout"))
	// Output:
	// recommendations: true
	// recommendations: 推荐暂时不可用
	// checkout: true
}

// Turn a feature off for one device model on old app versions only.
func ExampleRule() {
	sb, _ := degrade.New([]degrade.Feature{{Name: "map-navigation", Level: degrade.Important}})
	defer sb.Close()
	_ = sb.Set(context.Background(), "map-navigation", degrade.State{
		Mode: degrade.On,
		Rules: []degrade.Rule{{
			When: []degrade.Condition{
				{Attr: "model", Op: "in", Values: []string{"HUAWEI-P30"}},
				{Attr: "app_version", Op: "lt", Values: []string{"2.3.0"}},
			},
			Enabled: false,
		}},
	}, degrade.Change{By: "alice", Reason: "crash on P30 before 2.3.0"})

	for _, a := range []degrade.Attributes{
		{Model: "HUAWEI-P30", AppVersion: "2.2.1"},
		{Model: "HUAWEI-P30", AppVersion: "2.3.0"},
		{Model: "iPhone15,2", AppVersion: "2.2.1"},
	} {
		ctx := degrade.WithAttributes(context.Background(), a)
		fmt.Println(a.Model, a.AppVersion, sb.Enabled(ctx, "map-navigation"))
	}
	// Output:
	// HUAWEI-P30 2.2.1 false
	// HUAWEI-P30 2.3.0 true
	// iPhone15,2 2.2.1 true
}

// A trigger turns optional features off while the error rate stays high,
// and back on once it has stayed low.
func ExampleWithTrigger() {
	var errorRate float64 // fed by the service's own measurements
	sb, err := degrade.New([]degrade.Feature{
		{Name: "recommendations", Level: degrade.Optional},
	}, degrade.WithTrigger(degrade.Trigger{
		Name:   "errors",
		Signal: degrade.SignalFunc(func() float64 { return errorRate }),
		Above:  0.05, For: 30e9, // above 5% for 30s
		Below: 0.01, RecoverFor: 60e9, // below 1% for a minute
		Shed: degrade.Optional,
	}))
	if err != nil {
		panic(err)
	}
	defer sb.Close()
	fmt.Println(sb.Enabled(context.Background(), "recommendations"))
	// Output: true
}
