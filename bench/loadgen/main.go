// Command loadgen is the load generator of hubbub's benchmark: one client for hubbub, the
// Socket.IO peer and a bare ws broadcast server, so every target is measured by the same code.
//
//	loadgen <fanout|idle|connect|rooms> --proto hubbub|socketio|ws --urls U1,U2 --secret S --pids P,... [flags]
//
// It prints one JSON object on stdout when it ends (diagnostics go to stderr) and exits 0, or
// exits 1 when the target crashed or was unusable, with {"error": "..."} in that object. See
// README.md beside this file for every flag and the output schema.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// epoch is the process's monotonic time origin: publications carry mono() of their sending,
// every receiver subtracts it from its own mono(), so latency never depends on the wall clock.
var epoch = time.Now()

// mono is nanoseconds since epoch on the monotonic clock.
func mono() int64 { return int64(time.Since(epoch)) }

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[loadgen %6.2fs] %s\n", time.Since(epoch).Seconds(), fmt.Sprintf(format, args...))
}

// Common holds the flags every scenario has.
type Common struct {
	Proto   string
	URLs    []string
	Secret  string
	PIDs    []int
	Timeout time.Duration
	Seed    uint64
	proto   Proto
}

// output is the JSON object printed at the end; scenarios fill it in as they go so a timeout
// or a crash can still print what was measured so far.
type output struct {
	mu   sync.Mutex
	data map[string]any
	once sync.Once
}

var out = &output{data: map[string]any{}}

// atExit runs before the result is printed.
var atExit []func()

func (o *output) set(key string, value any) {
	o.mu.Lock()
	o.data[key] = value
	o.mu.Unlock()
}

// emit prints the object once and exits with code.
func (o *output) emit(code int) {
	o.once.Do(func() {
		for _, f := range atExit {
			f()
		}
		o.mu.Lock()
		o.data["errors"] = errs.snapshot()
		o.data["disconnects"] = disconnects.snapshot()
		o.data["ok"] = code == 0
		b, err := json.Marshal(o.data)
		o.mu.Unlock()
		if err != nil {
			b = []byte(fmt.Sprintf(`{"error":%q,"ok":false}`, "encoding the result: "+err.Error()))
			code = 1
		}
		os.Stdout.Write(append(b, '\n'))
		os.Exit(code)
	})
	select {} // another goroutine is emitting and exits the process
}

// fail reports an unusable target or a crash: the measurements so far plus "error", exit 1.
func fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	logf("error: %s", msg)
	out.set("error", msg)
	out.emit(1)
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage: loadgen <fanout|idle|connect|rooms|soak> [flags]   (loadgen <scenario> -h lists the flags)`)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 || strings.HasPrefix(os.Args[1], "-") {
		usage()
	}
	scenario := os.Args[1]
	fs := flag.NewFlagSet(scenario, flag.ExitOnError)
	c := Common{URLs: []string{}, PIDs: []int{}}
	var urls, pids string
	var timeout float64
	fs.StringVar(&c.Proto, "proto", "hubbub", "protocol: hubbub, socketio or ws")
	fs.StringVar(&urls, "urls", "", "comma-separated WebSocket URLs of the server processes (subscribers are split evenly; the publisher uses the first)")
	fs.StringVar(&c.Secret, "secret", "", "HS256 secret the tokens are signed with")
	fs.StringVar(&pids, "pids", "", "comma-separated server-side PIDs (servers, Redis) whose CPU and RSS are sampled")
	fs.Float64Var(&timeout, "timeout", 120, "hard cap on the whole run in seconds")
	fs.Uint64Var(&c.Seed, "seed", 1, "seed of the random choices (rooms scenario)")
	cpuprofile := fs.String("cpuprofile", "", "write a Go CPU profile of the run to this file (diagnostics)")
	sources := fs.Int("sources", 1, "loopback source addresses to connect from (127.0.0.1, .2, ...): each gives another ~28,000 ephemeral ports towards one server port")

	var run func()
	switch scenario {
	case "fanout":
		run = fanoutFlags(fs, &c)
	case "idle":
		run = idleFlags(fs, &c)
	case "connect":
		run = connectFlags(fs, &c)
	case "rooms":
		run = roomsFlags(fs, &c)
	case "soak":
		run = soakFlags(fs, &c)
	default:
		usage()
	}
	if err := fs.Parse(os.Args[2:]); err != nil {
		usage()
	}
	if err := useSources(*sources, c.URLs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	c.Timeout = time.Duration(timeout * float64(time.Second))
	for _, u := range strings.Split(urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			c.URLs = append(c.URLs, u)
		}
	}
	for _, p := range strings.Split(pids, ",") {
		if p = strings.TrimSpace(p); p != "" {
			n, err := strconv.Atoi(p)
			if err != nil || n <= 0 {
				fmt.Fprintf(os.Stderr, "bad pid %q\n", p)
				os.Exit(2)
			}
			c.PIDs = append(c.PIDs, n)
		}
	}

	out.set("scenario", scenario)
	out.set("proto", c.Proto)
	out.set("urls", c.URLs)
	out.set("pids", c.PIDs)
	params := map[string]any{}
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "secret" {
			params[f.Name] = f.Value.String()
		}
	})
	out.set("params", params)

	switch c.Proto {
	case "hubbub":
		c.proto = hubbubProto{}
	case "socketio":
		c.proto = socketioProto{}
	case "ws":
		c.proto = wsProto{}
	default:
		fail("unknown --proto %q (hubbub, socketio or ws)", c.Proto)
	}
	if len(c.URLs) == 0 {
		fail("--urls is required")
	}
	if c.Secret == "" {
		fail("--secret is required")
	}

	setup()
	out.set("loadgen", map[string]any{
		"gomaxprocs": runtime.GOMAXPROCS(0),
		"go":         runtime.Version(),
		"nofile":     nofileLimit(),
	})
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fail("cpuprofile: %v", err)
		}
		pprof.StartCPUProfile(f)
		atExit = append(atExit, pprof.StopCPUProfile)
	}
	go watchdog(c.Timeout)
	run()
	for _, pid := range c.PIDs {
		if !pidAlive(pid) {
			fail("server-side process %d exited during the run", pid)
		}
	}
	out.emit(0)
}

// setup raises RLIMIT_NOFILE to its hard limit and makes the collector lazier: the load
// generator allocates little per message, and a rare larger heap costs nothing here.
func setup() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			logf("raising RLIMIT_NOFILE: %v", err)
		}
	}
	debug.SetGCPercent(400)
	r, err := NewReactor()
	if err != nil {
		fail("epoll: %v", err)
	}
	reactor = r
}

func nofileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	return lim.Cur
}

// watchdog ends the run at --timeout, and on SIGINT/SIGTERM, with what was measured so far.
func watchdog(timeout time.Duration) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case <-time.After(timeout):
		fail("timeout: the run took longer than --timeout %.0f s", timeout.Seconds())
	case s := <-sig:
		fail("interrupted by %v", s)
	}
}

// counter counts labelled events (error replies, close codes) and keeps a few samples.
type counter struct {
	mu      sync.Mutex
	counts  map[string]int64
	samples []string
}

var (
	errs        = &counter{counts: map[string]int64{}}
	disconnects = &counter{counts: map[string]int64{}}
)

func (c *counter) add(key, sample string) {
	c.mu.Lock()
	c.counts[key]++
	if sample != "" && len(c.samples) < 8 {
		c.samples = append(c.samples, sample)
	}
	c.mu.Unlock()
}

func (c *counter) total() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for _, v := range c.counts {
		n += v
	}
	return n
}

func (c *counter) snapshot() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	counts := make(map[string]int64, len(c.counts))
	var total int64
	for k, v := range c.counts {
		counts[k] = v
		total += v
	}
	samples := append([]string{}, c.samples...)
	sort.Strings(samples)
	return map[string]any{"total": total, "by_kind": counts, "samples": samples}
}

// errorf is a short helper for error values with a kind used as the counter key.
type kindError struct {
	kind string
	msg  string
}

func (e *kindError) Error() string { return e.kind + ": " + e.msg }

func newKindError(kind, format string, args ...any) error {
	return &kindError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

func errKind(err error) string {
	var ke *kindError
	if errors.As(err, &ke) {
		return ke.kind
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "timeout"):
		return "timeout"
	case strings.Contains(s, "connection refused"):
		return "refused"
	case strings.Contains(s, "reset"):
		return "reset"
	case strings.Contains(s, "bad handshake"):
		return "handshake"
	}
	return "other"
}
