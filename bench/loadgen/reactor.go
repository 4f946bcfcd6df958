package main

import (
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Reactor reads every subscriber socket from one goroutine through a level-triggered epoll
// set: one read per ready socket per round (no trailing EAGAIN read, no goroutine wake-up per
// frame), whole frames parsed in place from one shared buffer.
//
// The epoll descriptor itself sits in Go's poller, so waiting for the next event parks the
// goroutine (the publisher and timers keep the one CPU) instead of blocking a thread.
//
// Coalescing: in this kind of VM a read of a loopback TCP socket costs ~4 us whether it
// returns one frame or twenty (the TCP stack and the ACK it sends dominate), so at high rates
// the load generator must read each socket less often. Every 50 ms the reactor compares the
// process's CPU time (getrusage) with the wall time: above cpuHigh it pauses between rounds
// (growing up to maxPause) so frames pile up and each read takes several; below cpuLow the
// pause shrinks and soon vanishes. At light load (the fixed phase) there is no pause and
// latency is measured as frames arrive; when a pause was used, latency includes up to that
// pause, and each phase reports loadgen_pause_ms_max.
type Reactor struct {
	epfd    int
	file    *os.File
	mu      sync.Mutex // held for a whole round; remove() takes it so no round sees a closed fd
	conns   []*wsConn  // by slot, never reused
	events  []syscall.EpollEvent
	scratch []byte
	stop    atomic.Bool
	done    chan struct{}

	pause    time.Duration
	MaxPause atomic.Int64 // ns, since the last ResetStats
	Reads    atomic.Int64 // read calls that returned data
	Msgs     atomic.Int64 // data messages handled
}

const (
	cpuHigh  = 0.65 // see also the LOADGEN_NO_COALESCE environment variable
	cpuLow   = 0.35
	minPause = 200 * time.Microsecond
	maxPause = 20 * time.Millisecond
	window   = 50 * time.Millisecond
)

var reactor *Reactor

// noCoalesce (LOADGEN_NO_COALESCE=1) disables the pauses, for diagnosis.
var noCoalesce = os.Getenv("LOADGEN_NO_COALESCE") == "1"

func NewReactor() (*Reactor, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		return nil, err
	}
	r := &Reactor{
		epfd:    epfd,
		file:    os.NewFile(uintptr(epfd), "epoll"),
		events:  make([]syscall.EpollEvent, 1024),
		scratch: make([]byte, 1<<20),
		done:    make(chan struct{}),
	}
	go r.run()
	return r, nil
}

func (r *Reactor) add(c *wsConn) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	c.slot = len(r.conns)
	r.conns = append(r.conns, c)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(c.slot)}
	if err := syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		r.conns[c.slot] = nil
		return err
	}
	// bytes read during setup may already hold frames
	if len(c.buf) > 0 {
		data := append([]byte(nil), c.buf...)
		c.buf = nil
		r.consume(c, data)
	}
	return nil
}

// remove takes a connection out of the set and closes it; with sendClose a close frame first.
func (r *Reactor) remove(c *wsConn, sendClose bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removeLocked(c, sendClose)
}

func (r *Reactor) removeLocked(c *wsConn, sendClose bool) {
	if c.dead {
		return
	}
	c.dead = true
	if sendClose {
		c.wmu.Lock()
		c.writeFrameLocked(opClose, []byte{0x03, 0xE8})
		c.wmu.Unlock()
	}
	syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
	r.conns[c.slot] = nil
	c.wmu.Lock()
	syscall.Close(c.fd)
	c.fd = -1
	c.wmu.Unlock()
}

// Stop ends the reactor goroutine (connections stay registered).
func (r *Reactor) Stop() {
	if r.stop.Swap(true) {
		return
	}
	r.file.SetReadDeadline(time.Now())
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
	}
}

// ResetStats starts a new measurement of pauses (one per phase).
func (r *Reactor) ResetStats() { r.MaxPause.Store(int64(r.pause)) }

func (r *Reactor) run() {
	defer close(r.done)
	rc, err := r.file.SyscallConn()
	if err != nil {
		fail("reactor: %v", err)
	}
	winStart, cpuStart := mono(), selfCPU()
	for !r.stop.Load() {
		err := rc.Read(r.round)
		if r.stop.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			fail("reactor: %v", err)
		}
		now := mono()
		if el := now - winStart; el >= int64(window) {
			cpu := selfCPU()
			frac := float64(cpu-cpuStart) / float64(el)
			switch {
			case frac > cpuHigh:
				r.pause = min(max(r.pause*3/2, minPause), maxPause)
			case frac < cpuLow && r.pause > 0:
				r.pause = r.pause * 2 / 3
				if r.pause < minPause {
					r.pause = 0
				}
			}
			if int64(r.pause) > r.MaxPause.Load() {
				r.MaxPause.Store(int64(r.pause))
			}
			winStart, cpuStart = now, cpu
		}
		if r.pause > 0 && !noCoalesce {
			time.Sleep(r.pause)
		}
	}
}

// round handles one batch of ready sockets; false (nothing ready) parks until the epoll
// descriptor becomes readable.
func (r *Reactor) round(fd uintptr) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	n, err := syscall.EpollWait(int(fd), r.events, 0)
	if n <= 0 || err != nil {
		return false
	}
	for i := 0; i < n; i++ {
		slot := int(r.events[i].Fd)
		if slot < 0 || slot >= len(r.conns) {
			continue
		}
		if c := r.conns[slot]; c != nil {
			r.readConn(c)
		}
	}
	return true
}

// readConn reads once from a ready socket and handles every complete frame.
func (r *Reactor) readConn(c *wsConn) {
	k := len(c.buf)
	if k > len(r.scratch)/2 {
		r.scratch = make([]byte, 4*k)
	}
	copy(r.scratch, c.buf)
	n, err := syscall.Read(c.fd, r.scratch[k:])
	if n <= 0 {
		if err == syscall.EAGAIN || err == syscall.EINTR {
			return
		}
		c.ended(err) // err nil: end of stream
		r.removeLocked(c, false)
		return
	}
	r.Reads.Add(1)
	r.consume(c, r.scratch[:k+n])
}

// consume parses and handles the frames in data and keeps an incomplete tail in c.buf.
func (r *Reactor) consume(c *wsConn, data []byte) {
	off := 0
	for {
		fin, op, payload, m, ok := parseFrame(data[off:])
		if !ok {
			break
		}
		off += m
		msg, err := c.frame(fin, op, payload)
		if err != nil {
			c.ended(err)
			r.removeLocked(c, false)
			return
		}
		if msg != nil {
			r.Msgs.Add(1)
			c.h.handle(msg)
		}
	}
	if off < len(data) {
		c.buf = append(c.buf[:0], data[off:]...)
	} else {
		c.buf = c.buf[:0]
	}
}

// selfCPU is the process's CPU time in nanoseconds.
func selfCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
