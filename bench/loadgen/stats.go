package main

import (
	"bytes"
	"math"
	"math/bits"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// ---------------------------------------------------------------- delivery tracking

// RecvState is one connection's view of the sequence numbers it received; only its receive
// loop touches it.
type RecvState struct {
	last int64    // highest seq received
	seen []uint64 // bitset of received seqs: duplicates
}

// Tracker counts deliveries per sequence number and per phase. Phases are consecutive ranges
// of sequence numbers: a delivery belongs to the phase its message was published in, however
// late it arrives.
type Tracker struct {
	counts  []atomic.Int32 // unique deliveries per seq
	expect  []atomic.Int32 // deliveries expected per seq (set before the publication is sent)
	phases  [16]atomic.Pointer[Phase]
	nphases atomic.Int32
	wake    chan struct{} // a message completed or failed (closed-loop publisher)

	pubOK     atomic.Int64 // ok replies to publishes (hubbub)
	lostConns atomic.Int64 // connections the server closed or dropped
	stray     atomic.Int64 // deliveries with a seq that was never published
}

func NewTracker(maxSeq int) *Tracker {
	return &Tracker{
		counts: make([]atomic.Int32, maxSeq),
		expect: make([]atomic.Int32, maxSeq),
		wake:   make(chan struct{}, 1),
	}
}

func (t *Tracker) capacity() int64 { return int64(len(t.counts)) }

// Phase is one measured stretch of publications.
type Phase struct {
	Name  string
	first int64 // first seq

	sent      atomic.Int64
	expected  atomic.Int64
	pubErrors atomic.Int64
	received  atomic.Int64 // unique deliveries
	dups      atomic.Int64
	ooo       atomic.Int64
	completed atomic.Int64 // messages every recipient got (or whose publish failed)
	lastRecv  atomic.Int64 // mono ns of the latest delivery
	hist      Hist

	start, pubEnd, end int64 // mono ns
	s0, s1             Sample
	reads0, msgs0      int64 // reactor counters at the start
	reads, msgs        int64 // reactor reads and messages during the phase
	maxPause           int64 // ns
}

// BeginPhase starts a phase whose first publication has sequence number first.
func (t *Tracker) BeginPhase(name string, first int64, pids []int) *Phase {
	p := &Phase{Name: name, first: first}
	n := t.nphases.Load()
	t.phases[n].Store(p)
	t.nphases.Store(n + 1)
	reactor.ResetStats()
	p.reads0, p.msgs0 = reactor.Reads.Load(), reactor.Msgs.Load()
	p.s0 = takeSample(pids)
	p.start = mono()
	return p
}

func (t *Tracker) phaseOf(seq int64) *Phase {
	for i := t.nphases.Load() - 1; i >= 0; i-- {
		if p := t.phases[i].Load(); seq >= p.first {
			return p
		}
	}
	return nil
}

// Expect registers a publication about to be sent to n recipients.
func (t *Tracker) Expect(p *Phase, seq int64, n int) {
	t.expect[seq].Store(int32(n))
	p.expected.Add(int64(n))
	p.sent.Add(1)
}

// Deliver is called by receive loops for every delivery.
func (t *Tracker) Deliver(rs *RecvState, seq, sent int64) {
	now := mono()
	if seq < 0 || seq >= int64(len(t.counts)) {
		t.stray.Add(1)
		return
	}
	p := t.phaseOf(seq)
	if p == nil {
		t.stray.Add(1)
		return
	}
	w := int(seq >> 6)
	if w >= len(rs.seen) {
		if w < cap(rs.seen) {
			rs.seen = rs.seen[:w+1]
		} else {
			ns := make([]uint64, w+1, 2*w+64)
			copy(ns, rs.seen)
			rs.seen = ns
		}
	}
	bit := uint64(1) << (uint64(seq) & 63)
	if rs.seen[w]&bit != 0 {
		p.dups.Add(1)
		return
	}
	rs.seen[w] |= bit
	if seq < rs.last {
		p.ooo.Add(1)
	} else {
		rs.last = seq
	}
	p.received.Add(1)
	p.hist.Record(now - sent)
	p.lastRecv.Store(now)
	if n := t.counts[seq].Add(1); n == t.expect[seq].Load() {
		p.completed.Add(1)
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// PublishFailed is called when the server refused a publication: it will never be delivered.
func (t *Tracker) PublishFailed(seq int64) {
	if seq < 0 || seq >= int64(len(t.counts)) {
		return
	}
	if p := t.phaseOf(seq); p != nil {
		p.pubErrors.Add(1)
		p.completed.Add(1)
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

// Drain waits until every expected delivery of the phase arrived, or for at most max.
func (p *Phase) Drain(max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		if p.completed.Load() >= p.sent.Load() || p.received.Load() >= p.expected.Load() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// End closes the phase's measurements.
func (p *Phase) End(pids []int) {
	p.end = mono()
	p.s1 = takeSample(pids)
	p.reads = reactor.Reads.Load() - p.reads0
	p.msgs = reactor.Msgs.Load() - p.msgs0
	p.maxPause = reactor.MaxPause.Load()
}

// PhaseReport is the JSON of one phase.
type PhaseReport struct {
	Seconds        float64 `json:"seconds"`         // phase start to its last delivery (or to the end of publishing)
	PublishSeconds float64 `json:"publish_seconds"` // phase start to the last publication sent
	Sent           int64   `json:"sent"`
	PublishErrors  int64   `json:"publish_errors"`
	Expected       int64   `json:"expected"`
	Received       int64   `json:"received"`
	Lost           int64   `json:"lost"`
	Duplicates     int64   `json:"duplicates"`
	OutOfOrder     int64   `json:"out_of_order"`
	Completed      int64   `json:"completed_messages"`
	MessagesPerS   float64 `json:"messages_per_s"`
	DeliveriesPerS float64 `json:"deliveries_per_s"`
	Latency

	ServerCPUS           float64            `json:"server_cpu_s"`
	ServerCPUByPID       map[string]float64 `json:"server_cpu_s_by_pid"`
	ServerCPUPct         float64            `json:"server_cpu_pct"`
	ServerCPUUsPerDeliv  float64            `json:"server_cpu_us_per_delivery"`
	LoadgenCPUS          float64            `json:"loadgen_cpu_s"`
	LoadgenCPUPct        float64            `json:"loadgen_cpu_pct"`
	Saturated            bool               `json:"saturated"`
	RSSKiB               map[string]int64   `json:"rss_kib"`
	RSSKiBTotal          int64              `json:"rss_kib_total"`
	LoadgenDeliveriesCPU float64            `json:"loadgen_deliveries_per_cpu_s"`
	LoadgenReads         int64              `json:"loadgen_reads"`             // socket reads that returned data
	LoadgenMsgsPerRead   float64            `json:"loadgen_messages_per_read"` // WebSocket messages per read
	LoadgenPauseMsMax    float64            `json:"loadgen_pause_ms_max"`      // longest coalescing pause (0: none)
}

// Latency is a latency summary in milliseconds.
type Latency struct {
	Count int64   `json:"latency_count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

func (p *Phase) Report() PhaseReport {
	r := PhaseReport{
		Sent:          p.sent.Load(),
		PublishErrors: p.pubErrors.Load(),
		Expected:      p.expected.Load(),
		Received:      p.received.Load(),
		Duplicates:    p.dups.Load(),
		OutOfOrder:    p.ooo.Load(),
		Completed:     p.completed.Load(),
		Latency:       p.hist.Summary(),
	}
	r.Lost = max(r.Expected-r.Received, 0)
	activeEnd := max(p.lastRecv.Load(), p.pubEnd)
	if activeEnd <= p.start {
		activeEnd = p.end
	}
	active := float64(activeEnd-p.start) / 1e9
	r.Seconds = round3(active)
	r.PublishSeconds = round3(float64(p.pubEnd-p.start) / 1e9)
	if r.PublishSeconds > 0 {
		r.MessagesPerS = round1(float64(r.Sent) / (float64(p.pubEnd-p.start) / 1e9))
	}
	if active > 0 {
		r.DeliveriesPerS = round1(float64(r.Received) / active)
	}
	fillCPU(&cpuFields{&r.ServerCPUS, &r.ServerCPUByPID, &r.ServerCPUPct, &r.LoadgenCPUS, &r.LoadgenCPUPct, &r.Saturated, &r.RSSKiB, &r.RSSKiBTotal}, p.s0, p.s1, active)
	if r.Received > 0 {
		r.ServerCPUUsPerDeliv = round3(r.ServerCPUS * 1e6 / float64(r.Received))
	}
	r.LoadgenReads = p.reads
	if p.reads > 0 {
		r.LoadgenMsgsPerRead = round3(float64(p.msgs) / float64(p.reads))
	}
	r.LoadgenPauseMsMax = round3(float64(p.maxPause) / 1e6)
	if r.LoadgenCPUS > 0 {
		r.LoadgenDeliveriesCPU = round1(float64(r.Received) / r.LoadgenCPUS)
	}
	return r
}

type cpuFields struct {
	serverS     *float64
	serverByPID *map[string]float64
	serverPct   *float64
	selfS       *float64
	selfPct     *float64
	saturated   *bool
	rss         *map[string]int64
	rssTotal    *int64
}

// fillCPU computes the CPU and memory figures between two samples over `active` seconds.
func fillCPU(f *cpuFields, s0, s1 Sample, active float64) {
	*f.serverByPID = map[string]float64{}
	var total float64
	for pid := range s1.CPU {
		if d, ok := cpuDelta(pid, s0, s1); ok {
			(*f.serverByPID)[strconv.Itoa(pid)] = round6(d)
			total += d
		}
	}
	*f.serverS = round6(total)
	self := s1.Self - s0.Self
	*f.selfS = round3(self)
	if active > 0 {
		*f.serverPct = round1(100 * total / active)
		*f.selfPct = round1(100 * self / active)
	}
	*f.saturated = *f.selfPct > 90
	*f.rss = map[string]int64{}
	for pid, kib := range s1.RSS {
		(*f.rss)[strconv.Itoa(pid)] = kib
		*f.rssTotal += kib
	}
}

func round1(v float64) float64 { return math.Round(v*10) / 10 }
func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
func round6(v float64) float64 { return math.Round(v*1e6) / 1e6 }

// ---------------------------------------------------------------- latency histogram

// Hist is a log-linear histogram of nanosecond values: 64 buckets per power of two (at most
// 1.6% relative error), recorded with atomics by many receive loops.
const histSub = 6

type Hist struct {
	buckets [64 << histSub]atomic.Int64
	count   atomic.Int64
	sum     atomic.Int64
	max     atomic.Int64
}

func histIndex(v uint64) int {
	if v < 1<<histSub {
		return int(v)
	}
	e := bits.Len64(v) - histSub - 1
	return e<<histSub + int(v>>uint(e))
}

// histValue is the middle of bucket i.
func histValue(i int) float64 {
	if i < 1<<histSub {
		return float64(i)
	}
	e := i>>histSub - 1
	m := i&(1<<histSub-1) | 1<<histSub
	return float64(uint64(m)<<uint(e)) + float64(uint64(1)<<uint(e))/2
}

func (h *Hist) Record(ns int64) {
	if ns < 0 {
		ns = 0
	}
	i := histIndex(uint64(ns))
	if i >= len(h.buckets) {
		i = len(h.buckets) - 1
	}
	h.buckets[i].Add(1)
	h.count.Add(1)
	h.sum.Add(ns)
	for {
		m := h.max.Load()
		if ns <= m || h.max.CompareAndSwap(m, ns) {
			break
		}
	}
}

func (h *Hist) Summary() Latency {
	n := h.count.Load()
	l := Latency{Count: n}
	if n == 0 {
		return l
	}
	q := func(frac float64) float64 {
		rank := int64(math.Ceil(frac * float64(n)))
		var acc int64
		for i := range h.buckets {
			acc += h.buckets[i].Load()
			if acc >= rank {
				return math.Min(histValue(i), float64(h.max.Load()))
			}
		}
		return float64(h.max.Load())
	}
	ms := func(ns float64) float64 { return math.Round(ns/1e3) / 1e3 }
	l.P50 = ms(q(0.50))
	l.P90 = ms(q(0.90))
	l.P99 = ms(q(0.99))
	l.Max = ms(float64(h.max.Load()))
	l.Mean = ms(float64(h.sum.Load()) / float64(n))
	return l
}

// ---------------------------------------------------------------- process sampling

// Sample is the CPU seconds and RSS of the server-side processes, and the load generator's
// own CPU seconds, at one instant.
//
// A process's CPU is read two ways: utime+stime of /proc/<pid>/stat (every thread, dead ones
// included, but in 10 ms ticks) and the sum of /proc/<pid>/task/*/schedstat (nanoseconds, live
// threads only). Between two samples whose thread sets are equal the precise sum is used;
// when a thread came or went, the tick count.
type Sample struct {
	At    int64
	CPU   map[int]float64 // seconds of utime+stime (ticks)
	Sched map[int]procSched
	RSS   map[int]int64 // KiB
	Self  float64       // seconds of the load generator's own CPU
}

type procSched struct {
	ns   int64  // sum over live threads
	tids string // the thread set, sorted
}

// cpuDelta is the CPU seconds pid used between s0 and s1.
func cpuDelta(pid int, s0, s1 Sample) (float64, bool) {
	c0, ok0 := s0.CPU[pid]
	c1, ok1 := s1.CPU[pid]
	if !ok0 || !ok1 {
		return 0, false
	}
	if a, ok := s0.Sched[pid]; ok {
		if b, ok := s1.Sched[pid]; ok && a.tids == b.tids && b.ns >= a.ns {
			return float64(b.ns-a.ns) / 1e9, true
		}
	}
	return c1 - c0, true
}

func procSchedstat(pid int) (procSched, bool) {
	dir := "/proc/" + strconv.Itoa(pid) + "/task"
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		return procSched{}, false
	}
	var ps procSched
	var tids []string
	for _, e := range entries {
		b, err := os.ReadFile(dir + "/" + e.Name() + "/schedstat")
		if err != nil {
			return procSched{}, false
		}
		f := bytes.Fields(b)
		if len(f) == 0 {
			return procSched{}, false
		}
		ns, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return procSched{}, false
		}
		ps.ns += ns
		tids = append(tids, e.Name())
	}
	sort.Strings(tids)
	ps.tids = strings.Join(tids, ",")
	return ps, true
}

// clockTicks is USER_HZ, which Linux fixes at 100 on every architecture it exports to /proc.
const clockTicks = 100

func takeSample(pids []int) Sample {
	s := Sample{At: mono(), CPU: map[int]float64{}, Sched: map[int]procSched{}, RSS: map[int]int64{}}
	for _, pid := range pids {
		if cpu, ok := procCPU(pid); ok {
			s.CPU[pid] = cpu
		}
		if ps, ok := procSchedstat(pid); ok {
			s.Sched[pid] = ps
		}
		if rss, ok := procRSS(pid); ok {
			s.RSS[pid] = rss
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.Self = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	return s
}

func procCPU(pid int) (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, false
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return float64(ut+st) / clockTicks, true
}

func procRSS(pid int) (int64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	i := bytes.Index(b, []byte("VmRSS:"))
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+len("VmRSS:"):])
	if len(f) == 0 {
		return 0, false
	}
	v, err := strconv.ParseInt(string(f[0]), 10, 64)
	return v, err == nil
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] != 'Z'
}

func sumRSS(s Sample) int64 {
	var t int64
	for _, v := range s.RSS {
		t += v
	}
	return t
}

func rssByPID(s Sample) map[string]int64 {
	m := map[string]int64{}
	for pid, v := range s.RSS {
		m[strconv.Itoa(pid)] = v
	}
	return m
}
