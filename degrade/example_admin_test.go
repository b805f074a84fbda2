package degrade_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"github.com/bulwarkgo/bulwark/degrade"
)

// Mount the admin console and API at /admin/degrade/ beside the service's
// own routes. Operators open /admin/degrade/ in a browser and paste their
// token; scripts call the API with curl.
func ExampleNewAdminHandler() {
	sb, err := degrade.New([]degrade.Feature{
		{Name: "checkout", Level: degrade.Core},
		{Name: "recommendations", Level: degrade.Optional},
	})
	if err != nil {
		panic(err)
	}
	defer sb.Close()

	// In production, read the tokens from a secret store: each is 32
	// random bytes in hex, and names who uses it in the audit trail.
	admin, err := degrade.NewAdminHandler(sb,
		degrade.WithMountPrefix("/admin/degrade/"),
		degrade.WithTokens(map[string]degrade.Principal{
			"7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e": {Name: "alice", Role: degrade.Operator},
			"0d2f4b6a8c1e3f5a7b9d2c4e6f8a1b3d": {Name: "oncall-dashboard", Role: degrade.Viewer},
		}))
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/admin/degrade/", admin)

	// What `curl -X PUT --json '{"state":{"mode":"off"},"reason":"..."}'` does.
	req := httptest.NewRequest("PUT", "/admin/degrade/api/features/recommendations",
		strings.NewReader(`{"state":{"mode":"off"},"reason":"reviews DB down"}`))
	req.Header.Set("Authorization", "Bearer 7f3a9c0e5b2d4f6a8c1e3b5d7f9a2c4e")
	req.Header.Set("Content-Type", "application/json")
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)
	fmt.Println(rec.Code)

	st, _ := sb.Status("recommendations")
	fmt.Println(st.State.Mode, st.Source)
	entries, _ := sb.Audit(req.Context(), 1)
	fmt.Println(entries[0].By, entries[0].Action, entries[0].Reason)
	// Output:
	// 200
	// off manual
	// alice set reviews DB down
}
