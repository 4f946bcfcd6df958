package main

import (
	"flag"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const maxSeq = 1 << 22 // publications per run at most (the tracker's arrays)

// ---------------------------------------------------------------- shared helpers

// SetupReport describes opening a set of connections.
type SetupReport struct {
	Wanted    int     `json:"wanted"`
	Connected int     `json:"connected"`
	Failed    int     `json:"failed"`
	Seconds   float64 `json:"seconds"`
	Latency
}

// dialMany opens n connections with at most inflight connects (dial, authenticate, join) at
// once, starts their receive loops, and returns them (nil where the connect failed).
func dialMany(c *Common, n, inflight int, opts func(i int) Options, rooms func(i int) []string, t *Tracker) ([]Conn, SetupReport) {
	conns := make([]Conn, n)
	var next atomic.Int64
	var failed atomic.Int64
	var hist Hist
	var wg sync.WaitGroup
	start := mono()
	var lastLog atomic.Int64
	var done atomic.Int64
	for w := 0; w < min(inflight, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := mono()
				conn, err := c.proto.Dial(opts(i))
				if err == nil {
					if err = conn.Join(rooms(i)); err != nil {
						conn.Close()
					}
				}
				if err != nil {
					failed.Add(1)
					errs.add("setup_"+errKind(err), err.Error())
					continue
				}
				hist.Record(mono() - t0)
				conn.Start(t)
				conns[i] = conn
				d := done.Add(1)
				if now := mono(); now-lastLog.Load() > int64(2*time.Second) {
					lastLog.Store(now)
					logf("setup: %d/%d connected, %d failed", d, n, failed.Load())
				}
			}
		}()
	}
	wg.Wait()
	r := SetupReport{Wanted: n, Failed: int(failed.Load()), Seconds: round3(float64(mono()-start) / 1e9), Latency: hist.Summary()}
	r.Connected = n - r.Failed
	logf("setup: %d connected, %d failed in %.2fs", r.Connected, r.Failed, r.Seconds)
	return conns, r
}

// closeAll closes connections, many at once.
func closeAll(conns []Conn) {
	start := mono()
	ch := make(chan Conn)
	var wg sync.WaitGroup
	for w := 0; w < 256; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				c.Close()
			}
		}()
	}
	for _, c := range conns {
		if c != nil {
			ch <- c
		}
	}
	close(ch)
	wg.Wait()
	logf("closed connections in %.2fs", float64(mono()-start)/1e9)
}

func urlFor(c *Common, i int) string { return c.URLs[i%len(c.URLs)] }

func sleepUntil(target int64) {
	if d := target - mono(); d > 0 {
		time.Sleep(time.Duration(d))
	}
}

func publish(pub Conn, t *Tracker, p *Phase, room string, seq int64, recipients int) {
	if seq >= t.capacity() {
		fail("more than %d publications in one run", t.capacity())
	}
	t.Expect(p, seq, recipients)
	if err := pub.Publish(room, seq, mono()); err != nil {
		fail("publisher connection failed: %v", err)
	}
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

// dialPublisher opens the publishing connection on the first URL and starts its receive loop.
func dialPublisher(c *Common, t *Tracker) Conn {
	pub, err := c.proto.Dial(Options{URL: c.URLs[0], Secret: c.Secret, User: 0, Publisher: true})
	if err != nil {
		fail("publisher: %v", err)
	}
	pub.Start(t)
	return pub
}

// membersOf counts the connected members of each of `rooms` rooms, connection i being in i % rooms.
func membersOf(conns []Conn, rooms int) []int {
	live := make([]int, rooms)
	for i, conn := range conns {
		if conn != nil {
			live[i%rooms]++
		}
	}
	return live
}

// publishPaced sends `count` publications evenly spaced at `rate` per second from the phase's start,
// publication i to room(i) expected by recipients(i), and returns at the nominal end of the period.
func publishPaced(pub Conn, t *Tracker, p *Phase, count int, rate float64, room func(i int) (string, int)) {
	interval := 1e9 / rate
	for i := 0; i < count; i++ {
		sleepUntil(p.start + int64(float64(i)*interval))
		name, recipients := room(i)
		publish(pub, t, p, name, int64(i), recipients)
	}
	sleepUntil(p.start + int64(float64(count)*interval))
	p.pubEnd = mono()
}

// ---------------------------------------------------------------- fanout

type fanoutArgs struct {
	subscribers, window, flood, inflight int
	rate, rateSeconds, maxSeconds        float64
	drain, floodWait, settle             float64
	room, phases                         string
}

func fanoutFlags(fs *flag.FlagSet, c *Common) func() {
	a := &fanoutArgs{}
	fs.IntVar(&a.subscribers, "subscribers", 1000, "subscriber connections, split evenly across --urls")
	fs.Float64Var(&a.rate, "rate", 5000, "fixed phase: deliveries per second (publications/s = rate / subscribers)")
	fs.Float64Var(&a.rateSeconds, "rate-seconds", 10, "fixed phase: seconds of publishing")
	fs.IntVar(&a.window, "window", 64, "max phase: publications in flight (not yet received by every subscriber)")
	fs.Float64Var(&a.maxSeconds, "max-seconds", 10, "max phase: seconds of publishing")
	fs.IntVar(&a.flood, "flood", 2000, "flood phase: publications sent as fast as possible")
	fs.Float64Var(&a.floodWait, "flood-wait", 10, "flood phase: seconds to wait for stragglers")
	fs.Float64Var(&a.drain, "drain", 5, "fixed and max phases: seconds to wait for stragglers")
	fs.Float64Var(&a.settle, "settle", 0.5, "seconds between the last join and the first publication")
	fs.IntVar(&a.inflight, "inflight", 200, "connects in flight during setup")
	fs.StringVar(&a.room, "room", "bench:fanout", "the room")
	fs.StringVar(&a.phases, "phases", "fixed,max,flood", "phases to run, in order")
	return func() { runFanout(c, a) }
}

func runFanout(c *Common, a *fanoutArgs) {
	if a.subscribers < 1 {
		fail("--subscribers must be at least 1")
	}
	if c.Proto == "ws" && len(c.URLs) > 1 {
		fail("the ws target takes one URL")
	}
	t := NewTracker(maxSeq)
	conns, setup := dialMany(c, a.subscribers, a.inflight,
		func(i int) Options { return Options{URL: urlFor(c, i), Secret: c.Secret, User: i + 1, Room: a.room} },
		func(int) []string { return []string{a.room} }, t)
	out.set("setup", setup)
	if setup.Connected == 0 {
		fail("no subscriber could connect")
	}
	pub, err := c.proto.Dial(Options{URL: c.URLs[0], Secret: c.Secret, User: 0, Room: a.room, Publisher: true})
	if err != nil {
		fail("publisher: %v", err)
	}
	pub.Start(t)
	time.Sleep(seconds(a.settle))
	n := setup.Connected
	recipients := func() int { return n - int(t.lostConns.Load()) }

	reports := map[string]PhaseReport{}
	var seq int64
	for _, name := range strings.Split(a.phases, ",") {
		name = strings.TrimSpace(name)
		p := t.BeginPhase(name, seq, c.PIDs)
		switch name {
		case "fixed":
			msgRate := a.rate / float64(n)
			count := max(int(math.Round(msgRate*a.rateSeconds)), 1)
			interval := 1e9 / msgRate
			logf("fixed: %d publications at %.2f/s (%.0f deliveries/s)", count, msgRate, a.rate)
			for i := 0; i < count; i++ {
				sleepUntil(p.start + int64(float64(i)*interval))
				publish(pub, t, p, a.room, seq, recipients())
				seq++
			}
			sleepUntil(p.start + int64(float64(count)*interval)) // the nominal end of the period
			p.pubEnd = mono()
			p.Drain(seconds(a.drain))
		case "max":
			logf("max: closed loop, window %d, %.0f s", a.window, a.maxSeconds)
			end := p.start + int64(a.maxSeconds*1e9)
			for {
				now := mono()
				if now >= end {
					break
				}
				if p.sent.Load()-p.completed.Load() < int64(a.window) {
					publish(pub, t, p, a.room, seq, recipients())
					seq++
					continue
				}
				select {
				case <-t.wake:
				case <-time.After(time.Duration(min(end-now, int64(100*time.Millisecond)))):
				}
			}
			p.pubEnd = mono()
			p.Drain(seconds(a.drain))
		case "flood":
			logf("flood: %d publications", a.flood)
			for i := 0; i < a.flood; i++ {
				publish(pub, t, p, a.room, seq, recipients())
				seq++
			}
			p.pubEnd = mono()
			p.Drain(seconds(a.floodWait))
		default:
			fail("unknown phase %q (fixed, max, flood)", name)
		}
		p.End(c.PIDs)
		r := p.Report()
		reports[name] = r
		out.set("phases", reports)
		logf("%s: sent %d, received %d/%d, %.0f deliveries/s, p50 %.2f ms, p99 %.2f ms, server %.2f us/delivery, loadgen %.0f%% (%.1f msgs/read, pause <= %.1f ms)",
			name, r.Sent, r.Received, r.Expected, r.DeliveriesPerS, r.P50, r.P99, r.ServerCPUUsPerDeliv, r.LoadgenCPUPct, r.LoadgenMsgsPerRead, r.LoadgenPauseMsMax)
	}
	finish(t, append(conns, pub))
}

// finish records the run-wide counters and closes every connection.
func finish(t *Tracker, conns []Conn) {
	out.set("connections_lost", t.lostConns.Load())
	out.set("stray_deliveries", t.stray.Load())
	out.set("publish_ok_replies", t.pubOK.Load())
	closeAll(conns)
}

// ---------------------------------------------------------------- rooms

type roomsArgs struct {
	rooms, connections, maxMembers, inflight int
	rate, seconds, drain, settle             float64
}

func roomsFlags(fs *flag.FlagSet, c *Common) func() {
	a := &roomsArgs{}
	fs.IntVar(&a.rooms, "rooms", 10000, "rooms bench:r<i>")
	fs.IntVar(&a.connections, "connections", 2000, "subscriber connections, split evenly across --urls")
	fs.IntVar(&a.maxMembers, "max-members", 5, "each room gets 1..max-members random members")
	fs.Float64Var(&a.rate, "rate", 2000, "publications per second, each to a uniformly random room")
	fs.Float64Var(&a.seconds, "seconds", 10, "seconds of publishing")
	fs.Float64Var(&a.drain, "drain", 5, "seconds to wait for stragglers")
	fs.Float64Var(&a.settle, "settle", 0.5, "seconds between the last join and the first publication")
	fs.IntVar(&a.inflight, "inflight", 200, "connects in flight during setup")
	return func() { runRooms(c, a) }
}

const maxRoomsPerConn = 128

func runRooms(c *Common, a *roomsArgs) {
	if !c.proto.MultiRoom() {
		fail("the rooms scenario needs several rooms per connection, which --proto %s does not have", c.Proto)
	}
	if a.rooms < 1 || a.connections < 1 || a.maxMembers < 1 {
		fail("--rooms, --connections and --max-members must be at least 1")
	}
	rng := rand.New(rand.NewPCG(c.Seed, 0x9e3779b97f4a7c15))
	members := make([][]int32, a.rooms)
	perConn := make([][]string, a.connections)
	var memberships int
	for r := range members {
		k := min(1+rng.IntN(a.maxMembers), a.connections)
		name := "bench:r" + strconv.Itoa(r)
		for tries := 0; len(members[r]) < k && tries < 100*k; tries++ {
			m := int32(rng.IntN(a.connections))
			if len(perConn[m]) >= maxRoomsPerConn || containsInt32(members[r], m) {
				continue
			}
			members[r] = append(members[r], m)
			perConn[m] = append(perConn[m], name)
			memberships++
		}
	}
	out.set("memberships", memberships)
	t := NewTracker(maxSeq)
	conns, setup := dialMany(c, a.connections, a.inflight,
		func(i int) Options { return Options{URL: urlFor(c, i), Secret: c.Secret, User: i + 1} },
		func(i int) []string { return perConn[i] }, t)
	out.set("setup", setup)
	if setup.Connected == 0 {
		fail("no connection could connect")
	}
	live := make([]int, a.rooms)
	for r, ms := range members {
		for _, m := range ms {
			if conns[m] != nil {
				live[r]++
			}
		}
	}
	pub := dialPublisher(c, t)
	time.Sleep(seconds(a.settle))

	p := t.BeginPhase("fixed", 0, c.PIDs)
	count := max(int(math.Round(a.rate*a.seconds)), 1)
	logf("rooms: %d publications at %.0f/s over %d rooms", count, a.rate, a.rooms)
	publishPaced(pub, t, p, count, a.rate, func(int) (string, int) {
		r := rng.IntN(a.rooms)
		return "bench:r" + strconv.Itoa(r), live[r]
	})
	p.Drain(seconds(a.drain))
	p.End(c.PIDs)
	r := p.Report()
	out.set("phases", map[string]PhaseReport{"fixed": r})
	logf("rooms: sent %d, received %d/%d, %.0f deliveries/s, p50 %.2f ms, p99 %.2f ms", r.Sent, r.Received, r.Expected, r.DeliveriesPerS, r.P50, r.P99)
	finish(t, append(conns, pub))
}

func containsInt32(s []int32, v int32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------- idle

type idleArgs struct {
	connections, rooms, inflight int
	settle, window               float64
	rate, rateSeconds, drain     float64
}

func idleFlags(fs *flag.FlagSet, c *Common) func() {
	a := &idleArgs{}
	fs.IntVar(&a.connections, "connections", 5000, "connections to open, split evenly across --urls")
	fs.IntVar(&a.rooms, "rooms", 100, "connection i joins bench:idle-<i % rooms>")
	fs.Float64Var(&a.settle, "settle", 5, "seconds to wait after the last connect before measuring")
	fs.Float64Var(&a.window, "window", 0,
		"then seconds of idle CPU measured (0: none); longer than the servers' ping interval to include the heartbeats")
	fs.IntVar(&a.inflight, "inflight", 200, "connects in flight")
	fs.Float64Var(&a.rate, "rate", 0,
		"then a phase \"held\" of this many deliveries/s while every connection is held (0: none): publications to the rooms in turn")
	fs.Float64Var(&a.rateSeconds, "rate-seconds", 10, "held phase: seconds of publishing")
	fs.Float64Var(&a.drain, "drain", 5, "held phase: seconds to wait for stragglers")
	return func() { runIdle(c, a) }
}

// IdleReport is the result of the idle scenario.
type IdleReport struct {
	Connections      int              `json:"connections"`
	Connected        int              `json:"connected"`
	Failed           int              `json:"failed"`
	ConnectSeconds   float64          `json:"connect_seconds"`
	ConnectsPerS     float64          `json:"connects_per_s"`
	RSSBefore        map[string]int64 `json:"rss_kib_before"`
	RSSAfter         map[string]int64 `json:"rss_kib_after"`
	RSSBeforeTotal   int64            `json:"rss_kib_before_total"`
	RSSAfterTotal    int64            `json:"rss_kib_after_total"`
	RSSPerConnection float64          `json:"rss_kib_per_connection"`
	SettleCPUS       float64          `json:"server_cpu_s_settle"`
	SettleCPUPct     float64          `json:"server_cpu_pct_settle"`
	ConnectCPUS      float64          `json:"server_cpu_s_connect"`
	// The idle window (--window): the servers' CPU while every connection is held and silent.
	WindowSeconds float64 `json:"window_seconds"`
	IdleCPUS      float64 `json:"server_cpu_s_idle"`
	IdleCPUPct    float64 `json:"server_cpu_pct_idle"`
	// Server CPU per held connection per idle second, in microseconds (µs/s = millionths of a core).
	IdleCPUUsPerConn float64 `json:"server_cpu_us_per_connection_s"`
	LoadgenCPUPct    float64 `json:"loadgen_cpu_pct"`
	Saturated        bool    `json:"saturated"`
	Lost             int64   `json:"connections_lost"`
	Latency
}

func runIdle(c *Common, a *idleArgs) {
	if c.Proto == "ws" && len(c.URLs) > 1 {
		fail("the ws target takes one URL")
	}
	if a.rooms < 1 || a.connections < 1 {
		fail("--connections and --rooms must be at least 1")
	}
	capacity := 0
	if a.rate > 0 {
		capacity = maxSeq
	}
	t := NewTracker(capacity)
	before := takeSample(c.PIDs)
	conns, setup := dialMany(c, a.connections, a.inflight,
		func(i int) Options {
			return Options{URL: urlFor(c, i), Secret: c.Secret, User: i + 1, Room: "bench:idle-" + strconv.Itoa(i%a.rooms)}
		},
		func(i int) []string { return []string{"bench:idle-" + strconv.Itoa(i%a.rooms)} }, t)
	connected := takeSample(c.PIDs)
	time.Sleep(seconds(a.settle))
	after := takeSample(c.PIDs)
	r := IdleReport{
		Connections: a.connections, Connected: setup.Connected, Failed: setup.Failed,
		ConnectSeconds: setup.Seconds,
		RSSBefore:      rssByPID(before), RSSAfter: rssByPID(after),
		RSSBeforeTotal: sumRSS(before), RSSAfterTotal: sumRSS(after),
		Lost:    t.lostConns.Load(),
		Latency: setup.Latency,
	}
	if setup.Connected > 0 {
		r.RSSPerConnection = round3(float64(r.RSSAfterTotal-r.RSSBeforeTotal) / float64(setup.Connected))
	}
	if setup.Seconds > 0 {
		r.ConnectsPerS = round3(float64(setup.Connected) / setup.Seconds)
	}
	var dummyMap map[string]float64
	var dummyRSS map[string]int64
	var dummyTotal int64
	var dummyPct, selfS float64
	var sat bool
	fillCPU(&cpuFields{&r.ConnectCPUS, &dummyMap, &dummyPct, &selfS, &r.LoadgenCPUPct, &sat, &dummyRSS, &dummyTotal},
		before, connected, float64(connected.At-before.At)/1e9)
	r.Saturated = sat
	fillCPU(&cpuFields{&r.SettleCPUS, &dummyMap, &r.SettleCPUPct, &selfS, &dummyPct, &sat, &dummyRSS, &dummyTotal},
		connected, after, float64(after.At-connected.At)/1e9)
	if a.window > 0 {
		time.Sleep(seconds(a.window))
		end := takeSample(c.PIDs)
		r.WindowSeconds = round3(float64(end.At-after.At) / 1e9)
		fillCPU(&cpuFields{&r.IdleCPUS, &dummyMap, &r.IdleCPUPct, &selfS, &dummyPct, &sat, &dummyRSS, &dummyTotal},
			after, end, r.WindowSeconds)
		if held := int64(setup.Connected) - t.lostConns.Load(); held > 0 && r.WindowSeconds > 0 {
			r.IdleCPUUsPerConn = round3(1e6 * r.IdleCPUS / r.WindowSeconds / float64(held))
		}
		r.Lost = t.lostConns.Load()
	}
	out.set("idle", r)
	logf("idle: %d connected, %d failed, %.2f KiB/connection, %.2f us/s of server CPU per connection",
		r.Connected, r.Failed, r.RSSPerConnection, r.IdleCPUUsPerConn)
	if a.rate > 0 && setup.Connected > 0 {
		pub := runHeld(c, a, conns, t)
		conns = append(conns, pub)
	}
	finish(t, conns)
}

// runHeld publishes to the idle rooms in turn at --rate deliveries/s while every connection is
// held: the latency and cost of traffic on a node carrying the whole idle population.
func runHeld(c *Common, a *idleArgs, conns []Conn, t *Tracker) Conn {
	live := membersOf(conns, a.rooms)
	pub := dialPublisher(c, t)
	members := float64(len(conns)) / float64(a.rooms)
	msgRate := a.rate / members
	count := max(int(math.Round(msgRate*a.rateSeconds)), 1)
	p := t.BeginPhase("held", 0, c.PIDs)
	logf("held: %d publications at %.1f/s to %d rooms of about %.0f (%.0f deliveries/s)", count, msgRate, a.rooms, members, a.rate)
	publishPaced(pub, t, p, count, msgRate, func(i int) (string, int) {
		return "bench:idle-" + strconv.Itoa(i%a.rooms), live[i%a.rooms]
	})
	p.Drain(seconds(a.drain))
	p.End(c.PIDs)
	r := p.Report()
	out.set("phases", map[string]PhaseReport{"held": r})
	logf("held: sent %d, received %d/%d, %.0f deliveries/s, p50 %.2f ms, p99 %.2f ms, server %.2f us/delivery",
		r.Sent, r.Received, r.Expected, r.DeliveriesPerS, r.P50, r.P99, r.ServerCPUUsPerDeliv)
	return pub
}

// ---------------------------------------------------------------- connect

type connectArgs struct {
	count, concurrency int
}

func connectFlags(fs *flag.FlagSet, c *Common) func() {
	a := &connectArgs{}
	fs.IntVar(&a.count, "count", 2000, "connections to open (kept open until all are done)")
	fs.IntVar(&a.concurrency, "concurrency", 1, "connects in flight")
	return func() { runConnect(c, a) }
}

// ConnectReport is the result of the connect scenario.
type ConnectReport struct {
	Count              int                `json:"count"`
	Concurrency        int                `json:"concurrency"`
	Connected          int                `json:"connected"`
	Failures           int                `json:"failures"`
	Seconds            float64            `json:"seconds"`
	ConnectsPerS       float64            `json:"connects_per_s"`
	ServerCPUS         float64            `json:"server_cpu_s"`
	ServerCPUByPID     map[string]float64 `json:"server_cpu_s_by_pid"`
	ServerCPUPct       float64            `json:"server_cpu_pct"`
	ServerCPUMsPerConn float64            `json:"server_cpu_ms_per_connect"`
	LoadgenCPUS        float64            `json:"loadgen_cpu_s"`
	LoadgenCPUPct      float64            `json:"loadgen_cpu_pct"`
	Saturated          bool               `json:"saturated"`
	RSSKiB             map[string]int64   `json:"rss_kib"`
	RSSKiBTotal        int64              `json:"rss_kib_total"`
	Lost               int64              `json:"connections_lost"`
	Latency
}

func runConnect(c *Common, a *connectArgs) {
	if a.count < 1 || a.concurrency < 1 {
		fail("--count and --concurrency must be at least 1")
	}
	t := NewTracker(0)
	conns := make([]Conn, a.count)
	var next, failures atomic.Int64
	var hist Hist
	var wg sync.WaitGroup
	tokens := make([]string, a.count) // minted before timing
	for i := range tokens {
		tokens[i] = mintToken(c.Secret, i+1)
	}
	s0 := takeSample(c.PIDs)
	for w := 0; w < min(a.concurrency, a.count); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= a.count {
					return
				}
				t0 := mono()
				conn, err := c.proto.Dial(Options{URL: urlFor(c, i), Token: tokens[i], User: i + 1, Room: "bench:connect"})
				if err != nil {
					failures.Add(1)
					errs.add("connect_"+errKind(err), err.Error())
					continue
				}
				hist.Record(mono() - t0)
				conn.Start(t)
				conns[i] = conn
			}
		}()
	}
	wg.Wait()
	s1 := takeSample(c.PIDs)
	elapsed := float64(s1.At-s0.At) / 1e9
	r := ConnectReport{Count: a.count, Concurrency: a.concurrency, Failures: int(failures.Load()), Seconds: round3(elapsed), Latency: hist.Summary()}
	r.Connected = a.count - r.Failures
	if elapsed > 0 {
		r.ConnectsPerS = round1(float64(r.Connected) / elapsed)
	}
	fillCPU(&cpuFields{&r.ServerCPUS, &r.ServerCPUByPID, &r.ServerCPUPct, &r.LoadgenCPUS, &r.LoadgenCPUPct, &r.Saturated, &r.RSSKiB, &r.RSSKiBTotal}, s0, s1, elapsed)
	if r.Connected > 0 {
		r.ServerCPUMsPerConn = round3(r.ServerCPUS * 1e3 / float64(r.Connected))
	}
	r.Lost = t.lostConns.Load()
	out.set("connect", r)
	logf("connect: %d/%d in %.2fs, %.0f/s, p50 %.2f ms, p99 %.2f ms, server %.3f ms/connect",
		r.Connected, r.Count, r.Seconds, r.ConnectsPerS, r.P50, r.P99, r.ServerCPUMsPerConn)
	closeAll(conns)
	if r.Connected == 0 {
		fail("no connection succeeded")
	}
}
