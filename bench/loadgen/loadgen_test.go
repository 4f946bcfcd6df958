package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"
)

func TestSeqAndTime(t *testing.T) {
	cases := []struct {
		in      string
		seq, ts int64
		ok      bool
	}{
		{`{"push":"pub","room":"bench:fanout","offset":7,"data":{"seq":12,"t":3456},"ts":1732550400000}`, 12, 3456, true},
		{`42["message",{"seq":0,"t":99}]`, 0, 99, true},
		{`{"seq": 5, "t": 6}`, 5, 6, true},
		{`{"t":8,"seq":9}`, 9, 8, true},
		{`{"seq":"x","t":1}`, 0, 0, false},
		{`{"push":"ping"}`, 0, 0, false},
	}
	for _, c := range cases {
		seq, ts, ok := seqAndTime([]byte(c.in))
		if ok != c.ok || (ok && (seq != c.seq || ts != c.ts)) {
			t.Errorf("%s: got %d %d %v", c.in, seq, ts, ok)
		}
	}
	if got := string(appendSeqData(nil, 42, -7)); got != `{"seq":42,"t":-7}` {
		t.Errorf("appendSeqData: %s", got)
	}
}

func serverFrame(op byte, fin bool, payload []byte) []byte {
	b0 := op
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch l := len(payload); {
	case l < 126:
		b = append(b, byte(l))
	case l < 1<<16:
		b = append(b, 126, byte(l>>8), byte(l))
	default:
		b = append(b, 127)
		b = binary.BigEndian.AppendUint64(b, uint64(l))
	}
	return append(b, payload...)
}

func TestParseFrame(t *testing.T) {
	for _, size := range []int{0, 5, 125, 126, 300, 70000} {
		payload := bytes.Repeat([]byte{'a'}, size)
		f := serverFrame(opText, true, payload)
		for cut := 0; cut < len(f); cut += 1 + len(f)/7 {
			if _, _, _, _, ok := parseFrame(f[:cut]); ok {
				t.Fatalf("size %d: a frame cut at %d parsed", size, cut)
			}
		}
		fin, op, p, n, ok := parseFrame(append(f, 0x81))
		if !ok || !fin || op != opText || n != len(f) || !bytes.Equal(p, payload) {
			t.Fatalf("size %d: fin %v op %d n %d ok %v", size, fin, op, n, ok)
		}
	}
}

func TestMaskRoundTrip(t *testing.T) {
	for _, size := range []int{0, 1, 7, 8, 9, 100} {
		orig := make([]byte, size)
		for i := range orig {
			orig[i] = byte(i * 7)
		}
		b := append([]byte(nil), orig...)
		maskBytes(b, 0xA1B2C3D4)
		var key [4]byte
		binary.LittleEndian.PutUint32(key[:], 0xA1B2C3D4)
		for i := range b {
			if b[i]^key[i&3] != orig[i] {
				t.Fatalf("size %d: byte %d", size, i)
			}
		}
	}
}

func TestHist(t *testing.T) {
	var h Hist
	for v := int64(1); v <= 100000; v++ {
		h.Record(v * 1000) // 1 us .. 100 ms
	}
	s := h.Summary()
	check := func(name string, got, want float64) {
		if math.Abs(got-want)/want > 0.02 {
			t.Errorf("%s: got %v want ~%v", name, got, want)
		}
	}
	check("p50", s.P50, 50)
	check("p90", s.P90, 90)
	check("p99", s.P99, 99)
	check("max", s.Max, 100)
	for _, v := range []uint64{0, 1, 63, 64, 65, 127, 128, 1 << 20, 1<<40 + 12345} {
		i := histIndex(v)
		if mid := histValue(i); v >= 64 && math.Abs(mid-float64(v))/float64(v) > 0.016 {
			t.Errorf("value %d: bucket %d middle %v", v, i, mid)
		}
	}
}

func TestTracker(t *testing.T) {
	tr := NewTracker(1024)
	reactor = &Reactor{}
	p := tr.BeginPhase("x", 0, nil)
	for seq := int64(0); seq < 3; seq++ {
		tr.Expect(p, seq, 2)
	}
	a, b := &RecvState{last: -1}, &RecvState{last: -1}
	now := mono()
	tr.Deliver(a, 0, now)
	tr.Deliver(a, 2, now)
	tr.Deliver(a, 1, now) // out of order
	tr.Deliver(a, 1, now) // duplicate
	tr.Deliver(b, 0, now)
	tr.Deliver(b, 1, now)
	tr.Deliver(b, 5000, now) // never published
	p.End(nil)
	r := p.Report()
	if r.Sent != 3 || r.Expected != 6 || r.Received != 5 || r.Lost != 1 || r.Duplicates != 1 || r.OutOfOrder != 1 || r.Completed != 2 {
		t.Fatalf("%+v", r)
	}
	if tr.stray.Load() != 1 {
		t.Fatalf("stray %d", tr.stray.Load())
	}
}

func TestHubbubLines(t *testing.T) {
	tr := NewTracker(1024)
	reactor = &Reactor{}
	p := tr.BeginPhase("x", 0, nil)
	tr.Expect(p, 0, 1)
	tr.Expect(p, 1, 1)
	c := &hubbubConn{c: &wsConn{rs: RecvState{last: -1}}, t: tr}
	c.handle([]byte(`{"push":"pub","room":"bench:fanout","offset":1,"data":{"seq":0,"t":1},"ts":1}` + "\n" +
		`{"id":11,"ok":{"epoch":"e","offset":2}}` + "\n" +
		`{"id":10,"error":{"code":429,"reason":"rate limited"}}`))
	if p.received.Load() != 1 || tr.pubOK.Load() != 1 || p.pubErrors.Load() != 1 {
		t.Fatalf("received %d ok %d errors %d", p.received.Load(), tr.pubOK.Load(), p.pubErrors.Load())
	}
}
