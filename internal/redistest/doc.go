// Package redistest gives every test a real Redis server.
//
// [Addr] finds one in this order: the address in BULWARK_REDIS_ADDR; a server
// answering PING at 127.0.0.1:6379; a private redis-server from PATH started
// once per test binary on a free port (no persistence) and stopped when the
// binary ends. When none can be had the test is skipped with a message saying
// how to run it, unless the CI environment variable is set, in which case it
// fails. [StartServer] starts a private server that a test may kill and
// restart on the same port, for fault tests; [StartServerWith] passes it
// more arguments, such as persistence, and [Server.Stall] makes it stop
// answering for a while. [Prefix] gives each test its own key prefix, so
// tests share a server without FLUSHALL.
//
// A package using it calls [Main] from TestMain, which also checks for
// leaked goroutines.
package redistest
