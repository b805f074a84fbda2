package breaker_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/bulwarkgo/bulwark/breaker"
)

// An http.Client whose requests go through one breaker per host: after two
// 5xx answers in a row the map service is cut off, and the client fails
// fast with ErrOpen instead of waiting on it.
func ExampleNewRoundTripper() {
	maps := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "upstream timeout", http.StatusGatewayTimeout)
	}))
	defer maps.Close()

	hosts := breaker.NewGroup[*http.Response]("outbound",
		breaker.WithMaxKeys(1000),
		breaker.WithBreakerOptions(
			breaker.WithTripPolicy(breaker.ConsecutiveFailures(2)),
			breaker.WithOpenTimeout(10*time.Second)))
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	client := &http.Client{
		Transport: breaker.NewRoundTripper(transport, breaker.WithGroup(hosts)),
		Timeout:   5 * time.Second,
	}

	for range 3 {
		resp, err := client.Get(maps.URL + "/route?from=a&to=b")
		if errors.Is(err, breaker.ErrOpen) {
			fmt.Println("rejected without a request: the map service is down")
			continue
		}
		if err != nil {
			fmt.Println(err)
			continue
		}
		// A 5xx counts against the host, but the response is still the
		// caller's to read and close.
		fmt.Println(resp.Status)
		resp.Body.Close()
	}
	// Output:
	// 504 Gateway Timeout
	// 504 Gateway Timeout
	// rejected without a request: the map service is down
}
