package degrade

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// Guard serves next only while feature is on for the request. Otherwise it
// answers 503 with Retry-After and a JSON body carrying the feature's
// user-facing message in the request's locale:
//
//	{"error":"degraded","feature":"recommendations","message":"当前系统繁忙，部分功能暂不可用"}
//
// retryAfter is the Retry-After in whole seconds (at least 1).
func Guard(s *Switchboard, feature string, retryAfter time.Duration) func(http.Handler) http.Handler {
	ra := strconv.Itoa(max(1, int((retryAfter+time.Second-1)/time.Second)))
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			err := s.Check(r.Context(), feature)
			var de *DegradedError
			if !errors.As(err, &de) {
				next.ServeHTTP(w, r)
				return
			}
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("Cache-Control", "no-store")
			h.Set("Retry-After", ra)
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(struct {
				Error   string `json:"error"`
				Feature string `json:"feature"`
				Message string `json:"message"`
			}{"degraded", de.Feature, de.Message})
		})
	}
}

// WithRequestAttributes puts the [Attributes] that attrs finds in each
// request into its context, for targeting by [Switchboard.Enabled] further
// down. [HeaderAttributes] reads the usual headers.
func WithRequestAttributes(attrs func(*http.Request) Attributes) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(WithAttributes(r.Context(), attrs(r))))
		})
	}
}

// HeaderAttributes reads a request's attributes from the headers a mobile
// or mini-program client sends: X-Platform, X-Device-Model, X-App-Version,
// X-Region and X-User-Id, and the first language of Accept-Language as
// the locale. Only trust X-User-Id from a gateway that sets it after
// authenticating the user; otherwise use your own function with the
// authenticated id.
func HeaderAttributes(r *http.Request) Attributes {
	h := r.Header
	return Attributes{
		Platform:   h.Get("X-Platform"),
		Model:      h.Get("X-Device-Model"),
		AppVersion: h.Get("X-App-Version"),
		Region:     h.Get("X-Region"),
		UserID:     h.Get("X-User-Id"),
		Locale:     firstLanguage(h.Get("Accept-Language")),
	}
}

// firstLanguage returns the first tag of an Accept-Language value.
func firstLanguage(v string) string {
	for i := 0; i < len(v); i++ {
		if v[i] == ',' || v[i] == ';' || v[i] == ' ' {
			return v[:i]
		}
	}
	return v
}
