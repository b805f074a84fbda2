package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// EnvAddr is the environment variable naming the Redis to test against.
const EnvAddr = "BULWARK_REDIS_ADDR"

const defaultAddr = "127.0.0.1:6379"

var (
	sharedOnce sync.Once
	sharedAddr string
	sharedErr  error

	// running holds every private server started by this binary, so Main
	// can stop them by pid even when a test forgot to.
	runningMu sync.Mutex
	running   = map[*Server]struct{}{}
)

// Main runs the package's tests, fails the binary if goroutines leak, and
// stops any private redis-server it started. Call it from TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// The leak check waits up to three seconds for goroutines to end: a go-redis
// pool whose dials failed (a test killed its server) retries in a goroutine
// that notices Close only after its one-second sleep.
func Main(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	if code == 0 {
		err := goleak.Find(opts...)
		for deadline := time.Now().Add(3 * time.Second); err != nil && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			err = goleak.Find(opts...)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "goleak: goroutines leaked by a successful test run: %v\n", err)
			code = 1
		}
	}
	stopAll()
	os.Exit(code)
}

func stopAll() {
	runningMu.Lock()
	defer runningMu.Unlock()
	for s := range running {
		s.kill()
		_ = os.RemoveAll(s.dir)
		delete(running, s)
	}
}

// Addr returns the address of a Redis for tests, or skips t (fails it when
// CI is set) when there is none.
func Addr(t testing.TB) string {
	t.Helper()
	sharedOnce.Do(func() { sharedAddr, sharedErr = findShared() })
	if sharedErr != nil {
		unavailable(t, sharedErr)
	}
	return sharedAddr
}

func findShared() (string, error) {
	if addr := os.Getenv(EnvAddr); addr != "" {
		if err := ping(addr, 2*time.Second); err != nil {
			return "", fmt.Errorf("%s=%s does not answer PING: %w", EnvAddr, addr, err)
		}
		return addr, nil
	}
	if ping(defaultAddr, 500*time.Millisecond) == nil {
		return defaultAddr, nil
	}
	s, err := start()
	if err != nil {
		return "", fmt.Errorf("no Redis at %s and none could be started: %w", defaultAddr, err)
	}
	return s.Addr, nil
}

func unavailable(t testing.TB, err error) {
	t.Helper()
	msg := "redistest: " + err.Error() + "; set " + EnvAddr + "=host:port or put redis-server on PATH"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// Client returns a client of the Redis at [Addr], closed when t ends.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	return NewClient(t, Addr(t))
}

// NewClient returns a client of the Redis at addr, closed when t ends.
func NewClient(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

var prefixSeq atomic.Uint64

// Prefix returns a key prefix unique to this test and this run, such as
// "bt:4242:7:TestAllow:". It holds no hash-tag braces.
func Prefix(t testing.TB) string {
	name := strings.NewReplacer("{", "(", "}", ")", " ", "_").Replace(t.Name())
	return "bt:" + strconv.Itoa(os.Getpid()) + ":" + strconv.FormatUint(prefixSeq.Add(1), 10) + ":" + name + ":"
}

// Server is a private redis-server owned by one test. It keeps its port
// across Kill and Start, so clients reconnect to it.
type Server struct {
	Addr string

	dir  string
	port int
	args []string // given to redis-server after the defaults

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartServer starts a private redis-server for t and stops it when t ends.
// It skips t (fails it when CI is set) when redis-server is not on PATH.
func StartServer(t testing.TB) *Server {
	t.Helper()
	return StartServerWith(t)
}

// StartServerWith is [StartServer] with more redis-server arguments, given
// after the defaults so that they override them: "--appendonly", "yes",
// "--appendfsync", "always" makes a server that keeps every acknowledged
// write across Kill and Start; "--enable-debug-command", "local" allows
// DEBUG SLEEP. The arguments are used again by every Start.
func StartServerWith(t testing.TB, args ...string) *Server {
	t.Helper()
	s, err := start(args...)
	if err != nil {
		unavailable(t, err)
	}
	t.Cleanup(func() {
		runningMu.Lock()
		delete(running, s)
		runningMu.Unlock()
		s.kill()
		_ = os.RemoveAll(s.dir)
	})
	return s
}

func start(args ...string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "bulwark-redis-")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), dir: dir, port: port, args: args}
	if err := s.run(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	runningMu.Lock()
	running[s] = struct{}{}
	runningMu.Unlock()
	return s, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) run() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("redistest: server already running")
	}
	args := append([]string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}, s.args...)
	cmd := exec.Command("redis-server", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := ping(s.Addr, 200*time.Millisecond)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			s.killLocked()
			return fmt.Errorf("redis-server on port %d did not start: %w\n%s", s.port, err, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill stops the server with SIGKILL, as a crash would, and waits for it
// to exit. Its data is gone, unless the server was started with
// persistence (see [StartServerWith]).
func (s *Server) Kill() { s.kill() }

// Start starts a killed server again on the same port.
func (s *Server) Start(t testing.TB) {
	t.Helper()
	if err := s.run(); err != nil {
		t.Fatal(err)
	}
}

// Stall makes the server stop answering for d, as a long script or a fork
// on a large dataset would (DEBUG SLEEP: start the server with
// "--enable-debug-command", "local"; see [StartServerWith]). It returns
// once a client finds the server not answering, with a function that waits
// until it answers again and returns when the stall began, reckoned back
// from its end. On a busy machine that client may give up before the server
// has begun to sleep: only calls made after began met the stall.
func (s *Server) Stall(t testing.TB, d time.Duration) (wait func() (began time.Time)) {
	t.Helper()
	ctx := context.Background()
	probe := redis.NewClient(&redis.Options{Addr: s.Addr, ContextTimeoutEnabled: true, MaxRetries: -1})
	defer probe.Close()
	sleeper := NewClient(t, s.Addr)
	// Both connected before the stall, so neither waits on a dial.
	for _, c := range []*redis.Client{probe, sleeper} {
		if err := c.Ping(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- sleeper.Do(ctx, "DEBUG", "SLEEP", d.Seconds()).Err() }()
	for {
		pctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		err := probe.Ping(pctx).Err()
		cancel()
		if err != nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return func() time.Time {
		if err := <-done; err != nil {
			t.Fatalf("DEBUG SLEEP: %v", err)
		}
		return time.Now().Add(-d)
	}
}

func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.killLocked()
}

func (s *Server) killLocked() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// ping sends PING over a plain connection. A go-redis client would do, but
// after a failed dial its pool keeps a goroutine retrying for up to a second
// after Close, which the leak check would see.
func ping(addr string, timeout time.Duration) error {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if reply != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(reply))
	}
	return nil
}
