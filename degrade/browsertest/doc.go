// Package browsertest drives the degrade admin console in headless
// Chromium. It is a module of its own so that users of bulwark never
// download a browser driver; CI runs it with
//
//	cd degrade/browsertest && go test -race -count=1 ./...
//
// The tests find Chromium at $BULWARK_CHROMIUM, /usr/bin/chromium or on
// PATH. Without one they skip, unless CI is set: then they fail.
package browsertest
