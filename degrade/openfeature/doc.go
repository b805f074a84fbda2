// Package openfeature is an OpenFeature provider backed by a
// [degrade.Switchboard], for services that read their flags through
// github.com/open-feature/go-sdk: the same switches an operator flips in
// Bulwark's console, and that triggers turn off under load, answer the
// OpenFeature client's boolean evaluations.
//
//	sb, _ := degrade.New(features, degrade.WithStore(redisStore))
//	p := openfeature.NewProvider(sb)
//	_ = of.SetNamedProviderAndWait("shop", p)
//	client := of.NewClient("shop")
//	on, _ := client.BooleanValue(ctx, "recommendations", true,
//		of.NewEvaluationContext("user-42", map[string]any{"platform": "ios", "appVersion": "3.2.0"}))
//
// It lives in a module of its own so that Bulwark's core module does not
// depend on the OpenFeature SDK.
//
// # Evaluation
//
// A feature is a boolean flag: BooleanEvaluation answers whether it is on
// for the evaluation context, exactly as [degrade.Switchboard.Enabled]
// would for the same attributes. The context maps to
// [degrade.Attributes]: the targeting key is the user ID (percentage
// rollouts hash it), and the attributes "platform", "model", "appVersion",
// "region" and "locale" (also accepted in snake case, app_version) fill the
// fields of the same names; other string attributes become
// Attributes.Custom, for rules on custom attributes.
//
// The result's variant is "on" or "off". Its reason says why:
//
//	STATIC           the feature's default, or an operator's plain on or off
//	TARGETING_MATCH  an operator's state with rules decided
//	SPLIT            an operator's percentage rollout decided
//	DISABLED         the feature is shed or held off by a trigger (degraded)
//
// Its flag metadata carries "level" (optional, important, core), "source"
// (default, manual, shed, trigger), "trigger" (the trigger holding it off,
// if any) and, when the feature is off for the context, "message": the
// user-facing message in the context's locale.
//
// An unknown flag answers the default value with FLAG_NOT_FOUND; string,
// number and object evaluations answer their default with TYPE_MISMATCH,
// since every switch is boolean. Evaluation reads the switchboard's
// snapshot: it takes no lock and never reaches the store.
//
// # Events
//
// Once the SDK has initialised the provider, every change of a feature's
// effective state (an operator's change, a shed, a trigger firing or
// recovering, a change made on another instance through a shared store)
// emits PROVIDER_CONFIGURATION_CHANGED naming the feature. While the
// switchboard's store cannot be read ([degrade.Switchboard.StoreHealthy]
// false), the provider emits PROVIDER_STALE once, and PROVIDER_READY when
// the store is read again: flags then still answer from the last known
// state. Shutdown stops the provider's goroutine; the switchboard is the
// caller's to close.
package openfeature
