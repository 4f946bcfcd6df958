package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// The protocol layer: every scenario talks to a target through Proto and Conn only.
//
//   Dial      opens the WebSocket and authenticates (hubbub: connect command; Socket.IO:
//             CONNECT with auth; ws: token in the query string, checked on upgrade). It
//             returns once the server accepted the client, so its duration is the connect
//             latency.
//   Join      joins rooms and waits for every acknowledgement (before Start).
//   Publish   sends one publication whose data is {"seq":N,"t":T}.
//   Start     starts the receive loop: it answers pings and hands every delivery's
//             (seq, t) to the Tracker.
//   Close     closes (a close frame, then the socket).

// Options describe one client.
type Options struct {
	URL       string
	Secret    string
	Token     string // a token minted beforehand (connect scenario); else minted from Secret and User
	User      int    // the token's sub is "u<User>"
	Room      string // ws only: the room in the URL (hubbub and Socket.IO join with Join)
	Publisher bool   // the publishing connection (ws: ?publisher=1); it keeps a blocking goroutine
}

type Proto interface {
	Dial(o Options) (Conn, error)
	// MultiRoom tells whether a connection may join several rooms.
	MultiRoom() bool
}

type Conn interface {
	Join(rooms []string) error
	Publish(room string, seq, t int64) error
	Start(t *Tracker)
	Close()
}

const (
	setupTimeout = 10 * time.Second
	pubIDBase    = 10 // hubbub publish ids are seq + pubIDBase; ids below are setup commands
)

// ---------------------------------------------------------------- common plumbing

// startConn begins receiving: the publisher keeps a goroutine reading in net mode (it must
// also write with blocking semantics); subscribers move to the reactor.
func startConn(c *wsConn, h handler, t *Tracker, publisher bool) {
	c.h, c.t, c.publisher = h, t, publisher
	if publisher {
		go func() {
			for {
				msg, err := c.readMessage()
				if err != nil {
					c.ended(err)
					return
				}
				h.handle(msg)
			}
		}()
		return
	}
	if err := c.detach(); err != nil {
		fail("detaching a connection for the reactor: %v", err)
	}
	if err := reactor.add(c); err != nil {
		fail("adding a connection to the reactor: %v", err)
	}
}

func closeErrKind(err error) error {
	var ce *closeError
	if errors.As(err, &ce) {
		return newKindError(fmt.Sprintf("close_%d", ce.code), "closed during setup: %d %s", ce.code, ce.reason)
	}
	return err
}

var tokenExp = time.Now().Add(time.Hour).Unix()

func (o Options) token() string {
	if o.Token != "" {
		return o.Token
	}
	return mintToken(o.Secret, o.User)
}

func mintToken(secret string, user int) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub":     "u" + strconv.Itoa(user),
		"rooms":   []string{"*"},
		"publish": []string{"*"},
		"exp":     tokenExp,
	})
	s, err := tok.SignedString([]byte(secret))
	if err != nil {
		panic(err)
	}
	return s
}

// ---------------------------------------------------------------- hubbub

type hubbubProto struct{}

func (hubbubProto) MultiRoom() bool { return true }

type hubbubConn struct {
	c         *wsConn
	publisher bool
	nextID    int64  // next setup command id
	cmd       []byte // command buffer (setup, then the publisher's goroutine)
	t         *Tracker
}

var (
	hubPubPrefix = []byte(`{"push":"pub"`)
	hubIDPrefix  = []byte(`{"id":`)
	hubOK        = []byte(`,"ok"`)
	hubPong      = []byte(`{"op":"pong"}`)
)

// hubMsg is the slow-path decoding of anything but a delivery or an ok reply.
type hubMsg struct {
	ID     *int64          `json:"id"`
	OK     json.RawMessage `json:"ok"`
	Error  *hubError       `json:"error"`
	Push   string          `json:"push"`
	Code   int             `json:"code"`
	Reason string          `json:"reason"`
}

type hubError struct {
	Code   int    `json:"code"`
	Reason string `json:"reason"`
}

func (hubbubProto) Dial(o Options) (Conn, error) {
	ws, err := wsDial(o.URL, "hubbub.v1.json")
	if err != nil {
		return nil, err
	}
	c := &hubbubConn{c: ws, publisher: o.Publisher, nextID: 2}
	c.cmd = append(c.cmd[:0], `{"id":1,"op":"connect","token":"`...)
	c.cmd = append(c.cmd, o.token()...)
	c.cmd = append(c.cmd, `"}`...)
	if err := ws.writeText(c.cmd); err != nil {
		ws.nc.Close()
		return nil, err
	}
	if err := c.await(map[int64]string{1: "connect"}); err != nil {
		ws.nc.Close()
		return nil, err
	}
	return c, nil
}

// await reads until every pending command has its reply (setup only), answering pings.
// It returns the first error reply; the others are counted.
func (c *hubbubConn) await(pending map[int64]string) error {
	var first error
	c.c.setReadDeadline(setupTimeout)
	defer c.c.setReadDeadline(0)
	for len(pending) > 0 {
		frame, err := c.c.readMessage()
		if err != nil {
			return closeErrKind(err)
		}
		for _, line := range bytes.Split(frame, []byte{'\n'}) {
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var m hubMsg
			if err := json.Unmarshal(line, &m); err != nil {
				errs.add("bad_json", string(line))
				continue
			}
			switch {
			case m.Push == "ping":
				c.c.writeText(hubPong)
			case m.Push == "disconnect":
				return newKindError(fmt.Sprintf("push_disconnect_%d", m.Code), "%s", m.Reason)
			case m.ID != nil:
				op, ok := pending[*m.ID]
				if !ok {
					continue
				}
				delete(pending, *m.ID)
				if m.Error != nil {
					e := newKindError(fmt.Sprintf("%s_%d", op, m.Error.Code), "%s", m.Error.Reason)
					if first == nil {
						first = e
					} else {
						errs.add(e.(*kindError).kind, e.Error())
					}
				}
			}
		}
	}
	return first
}

func (c *hubbubConn) Join(rooms []string) error {
	if len(rooms) == 0 {
		return nil
	}
	pending := make(map[int64]string, len(rooms))
	cmd := c.cmd[:0]
	for i, room := range rooms {
		if i > 0 {
			cmd = append(cmd, '\n')
		}
		id := c.nextID
		c.nextID++
		pending[id] = "join"
		cmd = append(cmd, `{"id":`...)
		cmd = appendInt(cmd, id)
		cmd = append(cmd, `,"op":"join","room":"`...)
		cmd = append(cmd, room...)
		cmd = append(cmd, `"}`...)
	}
	c.cmd = cmd
	if err := c.c.writeText(cmd); err != nil {
		return err
	}
	return c.await(pending)
}

func (c *hubbubConn) Publish(room string, seq, t int64) error {
	cmd := append(c.cmd[:0], `{"id":`...)
	cmd = appendInt(cmd, seq+pubIDBase)
	cmd = append(cmd, `,"op":"publish","room":"`...)
	cmd = append(cmd, room...)
	cmd = append(cmd, `","data":`...)
	cmd = appendSeqData(cmd, seq, t)
	cmd = append(cmd, '}')
	c.cmd = cmd
	return c.c.writeText(cmd)
}

func (c *hubbubConn) Start(t *Tracker) {
	c.t = t
	startConn(c.c, c, t, c.publisher)
}

func (c *hubbubConn) Close() { c.c.close(reactor) }

// handle splits a frame into its messages.
func (c *hubbubConn) handle(frame []byte) {
	for len(frame) > 0 {
		var line []byte
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			line, frame = frame, nil
		}
		c.line(line)
	}
}

func (c *hubbubConn) line(line []byte) {
	t := c.t
	if bytes.HasPrefix(line, hubPubPrefix) {
		if seq, ts, ok := seqAndTime(line); ok {
			t.Deliver(&c.c.rs, seq, ts)
			return
		}
	} else if bytes.HasPrefix(line, hubIDPrefix) {
		if id, end, ok := parseIntAt(line, len(hubIDPrefix), false); ok && bytes.HasPrefix(line[end:], hubOK) {
			if id >= pubIDBase {
				t.pubOK.Add(1)
			}
			return
		}
	}
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var m hubMsg
	if err := json.Unmarshal(line, &m); err != nil {
		errs.add("bad_json", string(line))
		return
	}
	switch {
	case m.Push == "ping":
		c.c.writeText(hubPong)
	case m.Push == "disconnect":
		disconnects.add(fmt.Sprintf("push_disconnect_%d", m.Code), m.Reason)
	case m.Push == "pub":
		errs.add("foreign_publication", string(line))
	case m.Push != "":
		// join/leave pushes: not expected in the bench namespace
	case m.ID != nil && m.Error != nil:
		op := "command"
		if *m.ID >= pubIDBase {
			op = "publish"
			t.PublishFailed(*m.ID - pubIDBase)
		}
		errs.add(fmt.Sprintf("%s_%d", op, m.Error.Code), m.Error.Reason)
	}
}

// ---------------------------------------------------------------- Socket.IO (EIO 4, websocket transport)

type socketioProto struct{}

func (socketioProto) MultiRoom() bool { return true }

type socketioConn struct {
	c         *wsConn
	publisher bool
	nextAck   int64
	msg       []byte
	t         *Tracker
}

var (
	sioPing  = []byte("2")
	sioPong  = []byte("3")
	sioEvent = []byte("42")
)

func (socketioProto) Dial(o Options) (Conn, error) {
	ws, err := wsDial(o.URL, "")
	if err != nil {
		return nil, err
	}
	c := &socketioConn{c: ws, publisher: o.Publisher}
	ws.setReadDeadline(setupTimeout)
	defer ws.setReadDeadline(0)
	fail := func(err error) (Conn, error) {
		ws.nc.Close()
		return nil, closeErrKind(err)
	}
	frame, err := ws.readMessage()
	if err != nil {
		return fail(err)
	}
	if len(frame) == 0 || frame[0] != '0' {
		return fail(newKindError("sio_open", "expected an Engine.IO open packet, got %.100q", frame))
	}
	if err := ws.writeText([]byte(`40{"token":"` + o.token() + `"}`)); err != nil {
		return fail(err)
	}
	for {
		frame, err := ws.readMessage()
		if err != nil {
			return fail(err)
		}
		switch {
		case bytes.Equal(frame, sioPing):
			ws.writeText(sioPong)
		case bytes.HasPrefix(frame, []byte("40")):
			return c, nil
		case bytes.HasPrefix(frame, []byte("44")):
			return fail(newKindError("sio_connect_error", "%.200s", frame[2:]))
		case len(frame) > 0 && frame[0] == '1':
			return fail(newKindError("sio_close", "closed during connect"))
		}
	}
}

func (c *socketioConn) Join(rooms []string) error {
	if len(rooms) == 0 {
		return nil
	}
	pending := make(map[int64]bool, len(rooms))
	for _, room := range rooms {
		c.nextAck++
		pending[c.nextAck] = true
		msg := append(c.msg[:0], "42"...)
		msg = appendInt(msg, c.nextAck)
		msg = append(msg, `["join","`...)
		msg = append(msg, room...)
		msg = append(msg, `"]`...)
		c.msg = msg
		if err := c.c.writeText(msg); err != nil {
			return err
		}
	}
	c.c.setReadDeadline(setupTimeout)
	defer c.c.setReadDeadline(0)
	for len(pending) > 0 {
		frame, err := c.c.readMessage()
		if err != nil {
			return closeErrKind(err)
		}
		switch {
		case bytes.Equal(frame, sioPing):
			c.c.writeText(sioPong)
		case bytes.HasPrefix(frame, []byte("43")):
			if id, _, ok := parseIntAt(frame, 2, false); ok {
				delete(pending, id)
			}
		case len(frame) > 0 && (frame[0] == '1' || bytes.HasPrefix(frame, []byte("41"))):
			return newKindError("sio_disconnect", "disconnected during join")
		}
	}
	return nil
}

func (c *socketioConn) Publish(room string, seq, t int64) error {
	// An acknowledged emit (`42<id>[...]`, answered `43<id>[true]`): every hubbub publish is
	// acknowledged, so the peers do the same work for it.
	c.nextAck++
	msg := append(c.msg[:0], "42"...)
	msg = appendInt(msg, c.nextAck)
	msg = append(msg, `["publish",{"room":"`...)
	msg = append(msg, room...)
	msg = append(msg, `","data":`...)
	msg = appendSeqData(msg, seq, t)
	msg = append(msg, "}]"...)
	c.msg = msg
	return c.c.writeText(msg)
}

func (c *socketioConn) Start(t *Tracker) {
	c.t = t
	startConn(c.c, c, t, c.publisher)
}

func (c *socketioConn) Close() { c.c.close(reactor) }

func (c *socketioConn) handle(frame []byte) {
	if bytes.HasPrefix(frame, sioEvent) {
		if seq, ts, ok := seqAndTime(frame); ok {
			c.t.Deliver(&c.c.rs, seq, ts)
			return
		}
		errs.add("sio_event", string(frame))
		return
	}
	switch {
	case bytes.Equal(frame, sioPing):
		c.c.writeText(sioPong)
	case bytes.HasPrefix(frame, []byte("43")), bytes.Equal(frame, []byte("6")):
	case bytes.HasPrefix(frame, []byte("41")):
		disconnects.add("sio_disconnect", "")
	case bytes.HasPrefix(frame, []byte("44")):
		errs.add("sio_error", string(frame))
	case len(frame) > 0 && frame[0] == '1':
		disconnects.add("sio_close", "")
	default:
		errs.add("sio_unexpected", string(frame))
	}
}

// ---------------------------------------------------------------- bare ws broadcast

type wsProto struct{}

func (wsProto) MultiRoom() bool { return false }

type plainConn struct {
	c         *wsConn
	publisher bool
	room      string
	msg       []byte
	t         *Tracker
}

func (wsProto) Dial(o Options) (Conn, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	room := o.Room
	if room == "" {
		room = "bench:none"
	}
	q.Set("room", room)
	q.Set("token", o.token())
	if o.Publisher {
		q.Set("publisher", "1")
	}
	u.RawQuery = q.Encode()
	ws, err := wsDial(u.String(), "")
	if err != nil {
		return nil, err
	}
	return &plainConn{c: ws, publisher: o.Publisher, room: room}, nil
}

func (c *plainConn) Join(rooms []string) error {
	for _, r := range rooms {
		if r != c.room {
			return newKindError("unsupported", "the ws target joins one room, given when connecting")
		}
	}
	return nil
}

func (c *plainConn) Publish(room string, seq, t int64) error {
	c.msg = appendSeqData(c.msg[:0], seq, t)
	return c.c.writeText(c.msg)
}

func (c *plainConn) Start(t *Tracker) {
	c.t = t
	startConn(c.c, c, t, c.publisher)
}

func (c *plainConn) Close() { c.c.close(reactor) }

func (c *plainConn) handle(frame []byte) {
	if seq, ts, ok := seqAndTime(frame); ok {
		c.t.Deliver(&c.c.rs, seq, ts)
	} else {
		errs.add("ws_unexpected", string(frame))
	}
}
