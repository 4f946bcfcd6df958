package main

import (
	"flag"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ---------------------------------------------------------------- soak
//
// Hours of a real deployment in minutes: connections held in rooms, steady traffic, and a share
// of the connections reconnecting all the time. Loss is counted on the connections that stay
// (a publication is expected by the steady members of its room); the churning ones rejoin the
// same rooms and receive the same traffic, and every one of their reconnects must succeed.
// The servers' RSS is sampled throughout, so a leak shows as a slope.

type soakArgs struct {
	connections, rooms, inflight int
	rate, seconds, churn         float64
	sample, drain, settle        float64
}

func soakFlags(fs *flag.FlagSet, c *Common) func() {
	a := &soakArgs{}
	fs.IntVar(&a.connections, "connections", 10000, "connections, split evenly across --urls")
	fs.IntVar(&a.rooms, "rooms", 1000, "connection i joins bench:soak-<i % rooms>")
	fs.Float64Var(&a.rate, "rate", 1000, "deliveries per second: publications to the rooms in turn")
	fs.Float64Var(&a.seconds, "seconds", 600, "seconds of traffic and churn")
	fs.Float64Var(&a.churn, "churn", 0.01, "share of the connections reconnecting every second (each churning connection reconnects about every 10 s)")
	fs.Float64Var(&a.sample, "sample", 10, "seconds between samples of the servers' RSS")
	fs.Float64Var(&a.drain, "drain", 5, "seconds to wait for stragglers at the end")
	fs.Float64Var(&a.settle, "settle", 2, "seconds between the last join and the first publication")
	fs.IntVar(&a.inflight, "inflight", 100, "connects in flight during setup")
	return func() { runSoak(c, a) }
}

// SoakSample is the servers' summed RSS at one moment of the soak.
type SoakSample struct {
	Seconds float64          `json:"s"`
	RSSKiB  int64            `json:"rss_kib"`
	ByPID   map[string]int64 `json:"rss_kib_by_pid"`
}

// SoakReport is the soak's own result (the traffic's is phases.soak).
type SoakReport struct {
	Connections int   `json:"connections"`
	Steady      int   `json:"steady"`
	Churning    int   `json:"churning"`
	Reconnects  int64 `json:"reconnects"`
	// Reconnects that failed (dial, authentication or join): each is an error.
	ReconnectFailures int64        `json:"reconnect_failures"`
	ReconnectLatency  Latency      `json:"reconnect_latency"`
	RSS               []SoakSample `json:"rss"`
	// RSS growth from the first sample to the last, KiB, and per connection.
	RSSGrowthKiB           int64   `json:"rss_growth_kib"`
	RSSGrowthPerConnection float64 `json:"rss_growth_kib_per_connection"`
	SteadyLost             int64   `json:"steady_connections_lost"`
}

func soakRoom(i, rooms int) string { return "bench:soak-" + strconv.Itoa(i%rooms) }

func runSoak(c *Common, a *soakArgs) {
	if a.connections < 2 || a.rooms < 1 || a.rate <= 0 || a.seconds <= 0 || a.churn < 0 || a.churn >= 0.1 {
		fail("--connections >= 2, --rooms >= 1, --rate > 0, --seconds > 0 and 0 <= --churn < 0.1 please")
	}
	perSecond := int(math.Round(a.churn * float64(a.connections)))
	pool := min(perSecond*10, a.connections/2)
	steady := a.connections - pool
	t := NewTracker(maxSeq)
	// The churning connections' deliveries go to a tracker of their own, which nothing is expected of.
	churnT := NewTracker(maxSeq)
	opts := func(i int) Options {
		return Options{URL: urlFor(c, i), Secret: c.Secret, User: i + 1, Room: soakRoom(i, a.rooms)}
	}
	join := func(i int) []string { return []string{soakRoom(i, a.rooms)} }
	conns, setup := dialMany(c, steady, a.inflight, opts, join, t)
	out.set("setup", setup)
	if setup.Connected == 0 {
		fail("no connection could connect")
	}
	churners, churnSetup := dialMany(c, pool, a.inflight,
		func(i int) Options { return opts(steady + i) }, func(i int) []string { return join(steady + i) }, churnT)
	out.set("churn_setup", churnSetup)
	live := membersOf(conns, a.rooms)
	pub := dialPublisher(c, t)
	time.Sleep(seconds(a.settle))

	r := SoakReport{Connections: a.connections, Steady: steady, Churning: pool}
	start := mono()
	sampleRSS := func() {
		s := takeSample(c.PIDs)
		r.RSS = append(r.RSS, SoakSample{round1(float64(mono()-start) / 1e9), sumRSS(s), rssByPID(s)})
	}
	sampleRSS()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reconnects, reconnectFailures atomic.Int64
	var reconnectHist Hist
	var mu sync.Mutex // churners[i] is replaced by the churn loop and read at the end
	if perSecond > 0 && pool > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			next := 0
			sem := make(chan struct{}, 64)
			var inner sync.WaitGroup
			defer inner.Wait()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				for k := 0; k < perSecond; k++ {
					i := next % pool
					next++
					sem <- struct{}{}
					inner.Add(1)
					go func(i int) {
						defer inner.Done()
						defer func() { <-sem }()
						mu.Lock()
						old := churners[i]
						churners[i] = nil
						mu.Unlock()
						if old != nil {
							old.Close()
						}
						t0 := mono()
						conn, err := c.proto.Dial(opts(steady + i))
						if err == nil {
							if err = conn.Join(join(steady + i)); err != nil {
								conn.Close()
							}
						}
						reconnects.Add(1)
						if err != nil {
							reconnectFailures.Add(1)
							errs.add("reconnect_"+errKind(err), err.Error())
							return
						}
						reconnectHist.Record(mono() - t0)
						conn.Start(churnT)
						mu.Lock()
						churners[i] = conn
						mu.Unlock()
					}(i)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(seconds(a.sample))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				sampleRSS()
			}
		}
	}()

	members := float64(steady) / float64(a.rooms)
	msgRate := a.rate / members
	count := max(int(math.Round(msgRate*a.seconds)), 1)
	p := t.BeginPhase("soak", 0, c.PIDs)
	logf("soak: %d publications at %.1f/s to %d rooms (%.0f deliveries/s to %d steady connections), %d reconnects/s among %d",
		count, msgRate, a.rooms, a.rate, steady, perSecond, pool)
	lastLog := mono()
	publishPaced(pub, t, p, count, msgRate, func(i int) (string, int) {
		if now := mono(); now-lastLog > int64(30*time.Second) {
			lastLog = now
			logf("soak: %.0f s, %d published, %d reconnects (%d failed), %d steady connections lost",
				float64(now-p.start)/1e9, i, reconnects.Load(), reconnectFailures.Load(), t.lostConns.Load())
		}
		return soakRoom(i, a.rooms), live[i%a.rooms]
	})
	close(stop)
	wg.Wait()
	p.Drain(seconds(a.drain))
	sampleRSS()
	p.End(c.PIDs)
	pr := p.Report()
	out.set("phases", map[string]PhaseReport{"soak": pr})
	r.Reconnects = reconnects.Load()
	r.ReconnectFailures = reconnectFailures.Load()
	r.ReconnectLatency = reconnectHist.Summary()
	r.SteadyLost = t.lostConns.Load()
	if n := len(r.RSS); n >= 2 {
		r.RSSGrowthKiB = r.RSS[n-1].RSSKiB - r.RSS[0].RSSKiB
		r.RSSGrowthPerConnection = round3(float64(r.RSSGrowthKiB) / float64(a.connections))
	}
	out.set("soak", r)
	logf("soak: sent %d, received %d/%d, lost %d, p99 %.2f ms; %d reconnects, %d failed; RSS %+d KiB",
		pr.Sent, pr.Received, pr.Expected, pr.Lost, pr.P99, r.Reconnects, r.ReconnectFailures, r.RSSGrowthKiB)
	all := append(conns, pub)
	mu.Lock()
	all = append(all, churners...)
	mu.Unlock()
	finish(t, all)
}
