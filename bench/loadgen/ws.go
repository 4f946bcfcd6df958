package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// A minimal RFC 6455 client. It exists (instead of a WebSocket library) because the hot path
// must not be the benchmark's bottleneck: after setup a connection's socket is handed to the
// Reactor, which reads every ready socket once per round and parses whole frames in place —
// no goroutine per connection, no buffered reader, no read-until-EAGAIN.
//
// A connection has two modes:
//   - net mode (setup, and the publisher for its whole life): a net.Conn with blocking reads
//     through Go's poller (readMessage), used for the handshake and the request/reply setup;
//   - reactor mode (subscribers after Start): the socket's file descriptor, duplicated out of
//     the net.Conn, in the Reactor's level-triggered epoll set. Bytes already read during
//     setup carry over.

const (
	opCont   = 0x0
	opText   = 0x1
	opBinary = 0x2
	opClose  = 0x8
	opPing   = 0x9
	opPong   = 0xA
)

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// closeError is a close frame received from the server.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("closed by the server: %d %s", e.code, e.reason)
}

// handler receives each complete text message of a connection.
type handler interface {
	handle(msg []byte)
}

type wsConn struct {
	nc   net.Conn // net mode; nil in reactor mode
	fd   int      // reactor mode; -1 before
	slot int      // reactor slot

	buf  []byte // unparsed input: buf[r:]
	r    int
	frag []byte // a fragmented message being assembled
	fop  byte

	wmu  sync.Mutex
	wbuf []byte

	closing   atomic.Bool // the load generator closes it: not a disconnect
	publisher bool
	dead      bool // reactor: removed
	h         handler
	t         *Tracker
	rs        RecvState // deliveries seen (touched by the receiving side only)
}

// wsDial opens a WebSocket: TCP connect, HTTP upgrade, optional subprotocol.
// sourceAddrs are the local addresses connections are made from, in turn (nil: the kernel's choice).
var (
	sourceAddrs []*net.TCPAddr
	nextSource  atomic.Uint64
)

// useSources makes connections come from n loopback addresses, 127.0.0.1 to 127.0.0.n: one source
// address has about 28,000 ephemeral ports (net.ipv4.ip_local_port_range) towards one server port,
// so 100,000 connections to one node need four or more. Only for loopback servers.
func useSources(n int, urls []string) error {
	if n < 1 || n > 254 {
		return fmt.Errorf("--sources must be 1 to 254, not %d", n)
	}
	if n == 1 {
		return nil
	}
	for _, raw := range urls {
		u, err := url.Parse(raw)
		if err != nil || !net.ParseIP(u.Hostname()).IsLoopback() {
			return fmt.Errorf("--sources needs loopback servers (127.0.0.1), not %s", raw)
		}
	}
	for i := 1; i <= n; i++ {
		sourceAddrs = append(sourceAddrs, &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(i))})
	}
	return nil
}

func dialer() *net.Dialer {
	d := &net.Dialer{Timeout: setupTimeout}
	if len(sourceAddrs) > 0 {
		d.LocalAddr = sourceAddrs[(nextSource.Add(1)-1)%uint64(len(sourceAddrs))]
	}
	return d
}

func wsDial(rawURL, subprotocol string) (*wsConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "ws" {
		return nil, newKindError("url", "only ws:// URLs are supported: %s", rawURL)
	}
	host := u.Host
	if u.Port() == "" {
		host += ":80"
	}
	nc, err := dialer().Dial("tcp", host)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(setupTimeout))
	var raw [16]byte
	rand.Read(raw[:])
	key := base64.StdEncoding.EncodeToString(raw[:])
	var req strings.Builder
	req.WriteString("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n")
	if subprotocol != "" {
		req.WriteString("Sec-WebSocket-Protocol: " + subprotocol + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := nc.Write([]byte(req.String())); err != nil {
		nc.Close()
		return nil, err
	}
	c := &wsConn{nc: nc, fd: -1, buf: make([]byte, 0, 2048), rs: RecvState{last: -1}}
	var end int
	for {
		if i := bytes.Index(c.buf, []byte("\r\n\r\n")); i >= 0 {
			end = i + 4
			break
		}
		if len(c.buf) > 16<<10 {
			nc.Close()
			return nil, newKindError("handshake", "response headers too long")
		}
		if err := c.fill(); err != nil {
			nc.Close()
			return nil, newKindError("handshake", "reading the upgrade response: %v", err)
		}
	}
	head := string(c.buf[:end])
	lines := strings.Split(head, "\r\n")
	parts := strings.SplitN(lines[0], " ", 3)
	if len(parts) < 2 {
		nc.Close()
		return nil, newKindError("handshake", "bad status line %q", lines[0])
	}
	status, _ := strconv.Atoi(parts[1])
	if status != 101 {
		body := c.buf[end:]
		// a short wait for the body of an error answer (the reason is worth reporting)
		nc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if len(body) == 0 {
			c.fill()
			body = c.buf[end:]
		}
		nc.Close()
		if len(body) > 300 {
			body = body[:300]
		}
		return nil, newKindError(fmt.Sprintf("http_%d", status), "upgrade refused: %s %s", lines[0], bytes.TrimSpace(body))
	}
	accept := sha1.Sum([]byte(key + wsGUID))
	want := base64.StdEncoding.EncodeToString(accept[:])
	ok := false
	for _, l := range lines[1:] {
		if k, v, found := strings.Cut(l, ":"); found && strings.EqualFold(strings.TrimSpace(k), "Sec-WebSocket-Accept") {
			ok = strings.TrimSpace(v) == want
		}
	}
	if !ok {
		nc.Close()
		return nil, newKindError("handshake", "missing or wrong Sec-WebSocket-Accept")
	}
	c.r = end
	nc.SetDeadline(time.Time{})
	return c, nil
}

// fill reads more input in net mode.
func (c *wsConn) fill() error {
	if c.r > 0 && c.r == len(c.buf) {
		c.buf, c.r = c.buf[:0], 0
	} else if c.r > 0 && cap(c.buf)-len(c.buf) < 512 {
		n := copy(c.buf, c.buf[c.r:])
		c.buf, c.r = c.buf[:n], 0
	}
	if cap(c.buf)-len(c.buf) < 512 {
		nb := make([]byte, len(c.buf), 2*cap(c.buf)+512)
		copy(nb, c.buf)
		c.buf = nb
	}
	n, err := c.nc.Read(c.buf[len(c.buf):cap(c.buf)])
	c.buf = c.buf[:len(c.buf)+n]
	if n > 0 {
		return nil
	}
	return err
}

// parseFrame parses one frame at the start of b. ok is false when b holds only part of it.
func parseFrame(b []byte) (fin bool, op byte, payload []byte, n int, ok bool) {
	if len(b) < 2 {
		return
	}
	fin = b[0]&0x80 != 0
	op = b[0] & 0x0F
	masked := b[1]&0x80 != 0
	l := int(b[1] & 0x7F)
	h := 2
	switch l {
	case 126:
		if len(b) < 4 {
			return
		}
		l = int(binary.BigEndian.Uint16(b[2:]))
		h = 4
	case 127:
		if len(b) < 10 {
			return
		}
		l64 := binary.BigEndian.Uint64(b[2:])
		if l64 > 1<<31 {
			l64 = 1 << 31
		}
		l = int(l64)
		h = 10
	}
	var mask []byte
	if masked {
		if len(b) < h+4 {
			return
		}
		mask = b[h : h+4]
		h += 4
	}
	if len(b) < h+l {
		return
	}
	payload = b[h : h+l]
	if masked { // servers never mask; tolerate it anyway
		for i := range payload {
			payload[i] ^= mask[i&3]
		}
	}
	return fin, op, payload, h + l, true
}

// frame handles one parsed frame: it returns a complete data message (or nil) and an error
// when the connection is closing. Control frames are answered here.
func (c *wsConn) frame(fin bool, op byte, payload []byte) ([]byte, error) {
	switch op {
	case opText, opBinary:
		if op == opBinary {
			errs.add("binary_frame", "")
		}
		if fin {
			return payload, nil
		}
		c.fop = op
		c.frag = append(c.frag[:0], payload...)
		return nil, nil
	case opCont:
		c.frag = append(c.frag, payload...)
		if fin {
			return c.frag, nil
		}
		return nil, nil
	case opPing:
		c.writeFrame(opPong, payload)
		return nil, nil
	case opPong:
		return nil, nil
	case opClose:
		ce := &closeError{code: 1005}
		if len(payload) >= 2 {
			ce.code = int(binary.BigEndian.Uint16(payload))
			ce.reason = string(payload[2:])
		}
		c.writeFrame(opClose, payload[:min(len(payload), 2)])
		return nil, ce
	default:
		return nil, fmt.Errorf("unknown opcode %d", op)
	}
}

// readMessage returns the next data message in net mode, valid until the next call.
func (c *wsConn) readMessage() ([]byte, error) {
	for {
		for {
			fin, op, payload, n, ok := parseFrame(c.buf[c.r:])
			if !ok {
				break
			}
			c.r += n
			msg, err := c.frame(fin, op, payload)
			if err != nil {
				return nil, err
			}
			if msg != nil {
				return msg, nil
			}
		}
		if err := c.fill(); err != nil {
			return nil, err
		}
	}
}

func (c *wsConn) setReadDeadline(d time.Duration) {
	if c.nc == nil {
		return
	}
	if d == 0 {
		c.nc.SetReadDeadline(time.Time{})
	} else {
		c.nc.SetReadDeadline(time.Now().Add(d))
	}
}

// writeFrame sends one masked frame.
func (c *wsConn) writeFrame(op byte, p []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeFrameLocked(op, p)
}

func (c *wsConn) writeText(p []byte) error { return c.writeFrame(opText, p) }

func (c *wsConn) writeFrameLocked(op byte, p []byte) error {
	b := c.wbuf[:0]
	b = append(b, 0x80|op)
	switch l := len(p); {
	case l < 126:
		b = append(b, 0x80|byte(l))
	case l < 1<<16:
		b = append(b, 0x80|126, byte(l>>8), byte(l))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(l))
	}
	mask := mrand.Uint32()
	b = binary.LittleEndian.AppendUint32(b, mask)
	start := len(b)
	b = append(b, p...)
	maskBytes(b[start:], mask)
	c.wbuf = b
	if c.nc != nil {
		_, err := c.nc.Write(b)
		return err
	}
	if c.fd < 0 {
		return errors.New("connection closed")
	}
	return writeAllFD(c.fd, b)
}

func maskBytes(b []byte, mask uint32) {
	m64 := uint64(mask) | uint64(mask)<<32
	i := 0
	for ; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], binary.LittleEndian.Uint64(b[i:])^m64)
	}
	for ; i < len(b); i++ {
		b[i] ^= byte(mask >> (8 * uint(i&3)))
	}
}

// writeAllFD writes b to a non-blocking socket, waiting a little when its buffer is full.
func writeAllFD(fd int, b []byte) error {
	deadline := time.Now().Add(2 * time.Second)
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if n > 0 {
			b = b[n:]
			continue
		}
		if err == syscall.EAGAIN || err == syscall.EINTR {
			if time.Now().After(deadline) {
				return errors.New("write timed out")
			}
			time.Sleep(time.Millisecond)
			continue
		}
		if err == nil {
			err = errors.New("short write")
		}
		return err
	}
	return nil
}

// detach turns a net-mode connection into a raw non-blocking descriptor for the reactor.
func (c *wsConn) detach() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return errors.New("not a socket")
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	var derr error
	if err := rc.Control(func(s uintptr) { fd, derr = syscall.Dup(int(s)) }); err != nil {
		return err
	}
	if derr != nil {
		return derr
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return err
	}
	c.nc.Close() // the duplicate keeps the socket open; Go's poller forgets it
	c.nc = nil
	c.fd = fd
	// keep only the unparsed bytes, in a small buffer
	rest := c.buf[c.r:]
	if len(rest) == 0 {
		c.buf = nil
	} else {
		c.buf = append([]byte(nil), rest...)
	}
	c.r = 0
	c.wbuf = make([]byte, 0, 64)
	return nil
}

// close sends a close frame (best effort) and closes the connection.
func (c *wsConn) close(r *Reactor) {
	if c.closing.Swap(true) {
		return
	}
	if c.nc != nil {
		c.wmu.Lock()
		c.nc.SetWriteDeadline(time.Now().Add(time.Second))
		c.writeFrameLocked(opClose, []byte{0x03, 0xE8})
		c.wmu.Unlock()
		c.nc.Close()
		return
	}
	r.remove(c, true)
}

// ended records why a connection stopped, unless the load generator closed it.
func (c *wsConn) ended(err error) {
	if c.closing.Load() {
		return
	}
	prefix := ""
	if c.publisher {
		prefix = "publisher_"
	} else {
		c.t.lostConns.Add(1) // a subscriber: later publications expect one recipient less
	}
	var ce *closeError
	switch {
	case errors.As(err, &ce):
		disconnects.add(fmt.Sprintf("%sclose_%d", prefix, ce.code), ce.Error())
	case err == nil || errors.Is(err, io.EOF):
		disconnects.add(prefix+"eof", "")
	default:
		disconnects.add(prefix+errKind(err), err.Error())
	}
}
