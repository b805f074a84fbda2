package breaker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// Payments go to WeChat Pay, and to Alipay while WeChat Pay fails. A
// declined card is WeChat Pay's final answer: it is returned at once and
// never re-sent to Alipay.
func ExampleFailover() {
	errNoFunds := errors.New("card declined: insufficient funds")
	wxpayDown := false
	charge := func(ctx context.Context, provider, card string, cents int) (string, error) {
		if provider == "wxpay" && wxpayDown {
			return "", errors.New("wxpay: 503 service unavailable")
		}
		if strings.HasSuffix(card, "0000") {
			return "", breaker.Final(errNoFunds)
		}
		return fmt.Sprintf("%s receipt for ¥%d.%02d", provider, cents/100, cents%100), nil
	}

	pay := breaker.NewFailover("payments",
		[]breaker.Provider[string]{{Name: "wxpay"}, {Name: "alipay"}},
		breaker.WithAttemptTimeout(3*time.Second))

	for _, card := range []string{"6222-1234", "6222-0000", "down", "6222-5678"} {
		if card == "down" {
			wxpayDown = true
			fmt.Println("-- wxpay goes down --")
			continue
		}
		res, err := pay.Execute(context.Background(), func(ctx context.Context, provider string) (string, error) {
			return charge(ctx, provider, card, 1999)
		})
		var tried []string
		for _, a := range res.Attempts() {
			tried = append(tried, a.Provider+" "+a.Outcome.String())
		}
		switch {
		case errors.Is(err, breaker.ErrFinal):
			fmt.Printf("%s: %v (by %s; tried %s)\n", card, err, res.Provider, strings.Join(tried, ", "))
		case err != nil:
			fmt.Printf("%s: payment unavailable: %v\n", card, err)
		default:
			fmt.Printf("%s: %s (tried %s)\n", card, res.Value, strings.Join(tried, ", "))
		}
	}
	// Output:
	// 6222-1234: wxpay receipt for ¥19.99 (tried wxpay success)
	// 6222-0000: card declined: insufficient funds (by wxpay; tried wxpay final)
	// -- wxpay goes down --
	// 6222-5678: alipay receipt for ¥19.99 (tried wxpay failure, alipay success)
}

// A geocoding lookup is idempotent, so it can be hedged: when the first
// map vendor has not answered within 50ms the second is asked too, the
// first answer wins and the slow request is cancelled.
func ExampleWithHedge() {
	geocode := func(ctx context.Context, provider, address string) (string, error) {
		if provider == "baidu" {
			<-ctx.Done() // stuck until cancelled
			return "", ctx.Err()
		}
		return "31.2304,121.4737", nil
	}
	maps := breaker.NewFailover("geocode",
		[]breaker.Provider[string]{{Name: "baidu"}, {Name: "amap"}},
		breaker.WithHedge(50*time.Millisecond))

	res, err := maps.Execute(context.Background(), func(ctx context.Context, provider string) (string, error) {
		return geocode(ctx, provider, "上海市人民广场")
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Value, "from", res.Provider)
	for _, a := range res.Attempts() {
		fmt.Println(" ", a.Provider, a.Outcome)
	}
	// Output:
	// 31.2304,121.4737 from amap
	//   baidu cancelled
	//   amap success
}
