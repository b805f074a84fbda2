package limiter_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/netip"

	"github.com/bulwarkgo/bulwark/limiter"
)

func ExampleNewMiddleware() {
	// 10 requests a minute per client IP, in bursts of up to 3.
	lim, err := limiter.NewLocal(limiter.PerMinute(10, 3))
	if err != nil {
		log.Fatal(err)
	}
	mw, err := limiter.NewMiddleware(lim, limiter.KeyByIP(),
		limiter.WithMessage("请求过于频繁，请稍后再试"))
	if err != nil {
		log.Fatal(err)
	}
	h := mw.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello\n")
	}))

	var last *httptest.ResponseRecorder
	for range 4 {
		last = httptest.NewRecorder()
		h.ServeHTTP(last, httptest.NewRequest(http.MethodGet, "/", nil)) // from 192.0.2.1
		fmt.Printf("%d remaining=%s retry-after=%q\n",
			last.Code, last.Header().Get("RateLimit-Remaining"), last.Header().Get("Retry-After"))
	}
	fmt.Println("RateLimit-Policy:", last.Header().Get("RateLimit-Policy"))
	fmt.Print(last.Body)
	// Output:
	// 200 remaining=2 retry-after=""
	// 200 remaining=1 retry-after=""
	// 200 remaining=0 retry-after=""
	// 429 remaining=0 retry-after="6"
	// RateLimit-Policy: 10;w=60;burst=3
	// {"error":"rate_limited","message":"请求过于频繁，请稍后再试","retry_after_seconds":6}
}

func ExampleKeyByIP() {
	// The service sits behind a load balancer in 10.0.0.0/8, which appends
	// the address it saw to X-Forwarded-For.
	key := limiter.KeyByIP(netip.MustParsePrefix("10.0.0.0/8"))

	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.RemoteAddr = "10.0.0.7:51234"
	// The client claimed to be 198.51.100.1; the load balancer saw 203.0.113.5.
	r.Header.Set("X-Forwarded-For", "198.51.100.1, 203.0.113.5")
	k, _ := key(r)
	fmt.Println("via the load balancer:", k)

	// A client reaching the service directly cannot choose its key.
	r.RemoteAddr = "203.0.113.9:40000"
	k, _ = key(r)
	fmt.Println("direct:", k)
	// Output:
	// via the load balancer: 203.0.113.5
	// direct: 203.0.113.9
}

func ExampleKeyOr() {
	// Signed-in users (the gateway sets X-User-ID) get a bucket each;
	// everyone else is limited by IP.
	key := limiter.KeyOr(limiter.KeyByHeader("X-User-ID"), limiter.KeyByIP())

	r := httptest.NewRequest(http.MethodGet, "/", nil)
	k, _ := key(r)
	fmt.Println(k)
	r.Header.Set("X-User-ID", "u-1024")
	k, _ = key(r)
	fmt.Println(k)
	// Output:
	// 192.0.2.1
	// u-1024
}

func ExampleWithDenyHandler() {
	lim, err := limiter.NewLocal(limiter.PerMinute(1, 1))
	if err != nil {
		log.Fatal(err)
	}
	// A page for browsers instead of the JSON body. Retry-After and the
	// RateLimit-* headers are already set.
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := limiter.DecisionFromContext(r.Context())
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(http.StatusTooManyRequests)
		fmt.Fprintf(w, "<p>%d request a minute, please. Try again in %s seconds.</p>\n",
			d.Limit.Rate, w.Header().Get("Retry-After"))
	})
	mw, err := limiter.NewMiddleware(lim, limiter.KeyByIP(), limiter.WithDenyHandler(page))
	if err != nil {
		log.Fatal(err)
	}
	h := mw.Handler(http.NotFoundHandler())

	for range 2 {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/", nil))
		fmt.Print(w.Code, " ", w.Body)
	}
	// Output:
	// 404 404 page not found
	// 429 <p>1 request a minute, please. Try again in 60 seconds.</p>
}
