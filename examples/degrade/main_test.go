package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bulwarkgo/bulwark/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

func TestIncident(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, []string{"-addr", "127.0.0.1:0", "-exit"}, &out); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, &out)
	}
	t.Logf("output:\n%s", &out)
	text := out.String()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^console: http://127\.0\.0\.1:\d+/admin/ \(operator token [0-9a-f]{32}\)$`),
		// Everything on at first.
		regexp.MustCompile(`(?m)^   HUAWEI-P30  2\.2\.1  map-navigation recommendations reviews$`),
		// Map navigation off for the old P30 only, with its message.
		regexp.MustCompile(`(?m)^   HUAWEI-P30  2\.2\.1  recommendations reviews \| 地图导航暂时不可用$`),
		regexp.MustCompile(`(?m)^   iPhone15,2  2\.4\.0  map-navigation recommendations reviews$`),
		// The trigger turns reviews off, then on again.
		regexp.MustCompile(`(?m)^   \+\S+ +iPhone15,2  map-navigation recommendations \| Reviews are unavailable for now\.$`),
		regexp.MustCompile(`(?m)^   \+\S+ +iPhone15,2  map-navigation recommendations reviews$`),
		// Shedding optional features spares the important one.
		regexp.MustCompile(`(?m)^   iPhone15,2  2\.4\.0  map-navigation \| The service is busy; some features are unavailable for now\.; Reviews are unavailable for now\.$`),
		// The audit trail, newest first.
		regexp.MustCompile(`(?s)restore +by ops-alice  sale over\n +shed +by ops-alice  noon flash sale\n +set +map-navigation +by ops-alice  crash report #512`),
	} {
		if !want.MatchString(text) {
			t.Errorf("output lacks %s", want)
		}
	}
	if strings.Contains(text, "panic") {
		t.Error("output mentions a panic")
	}
}
