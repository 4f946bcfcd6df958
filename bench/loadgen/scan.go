package main

import "bytes"

// Fast byte scans of the hot path: a delivery is found by locating "seq" and "t" in the
// frame instead of decoding JSON. Whitespace around ':' is tolerated; the keys are the
// load generator's own, so nothing else in a frame carries them.

var (
	keySeq = []byte(`"seq"`)
	keyT   = []byte(`"t"`)
)

// intAfterKey finds key in b and parses the integer value after it. It returns the value
// and the index just past it, or ok=false.
func intAfterKey(b, key []byte) (v int64, end int, ok bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, 0, false
	}
	return parseIntAt(b, i+len(key), true)
}

// parseIntAt parses an integer at b[i:], skipping whitespace and (when colon) one ':'.
func parseIntAt(b []byte, i int, colon bool) (v int64, end int, ok bool) {
	n := len(b)
	for i < n && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	if colon {
		if i >= n || b[i] != ':' {
			return 0, 0, false
		}
		i++
		for i < n && (b[i] == ' ' || b[i] == '\t') {
			i++
		}
	}
	neg := false
	if i < n && b[i] == '-' {
		neg = true
		i++
	}
	start := i
	for i < n && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	if i == start || i-start > 18 {
		return 0, 0, false
	}
	if neg {
		v = -v
	}
	return v, i, true
}

// seqAndTime extracts the sequence number and the sending time of a delivery.
func seqAndTime(b []byte) (seq, t int64, ok bool) {
	seq, end, ok := intAfterKey(b, keySeq)
	if !ok {
		return 0, 0, false
	}
	t, _, ok = intAfterKey(b[end:], keyT)
	if !ok {
		// keys in the other order
		t, _, ok = intAfterKey(b, keyT)
	}
	return seq, t, ok
}

// appendSeqData appends the publication payload {"seq":N,"t":T}.
func appendSeqData(b []byte, seq, t int64) []byte {
	b = append(b, `{"seq":`...)
	b = appendInt(b, seq)
	b = append(b, `,"t":`...)
	b = appendInt(b, t)
	return append(b, '}')
}

func appendInt(b []byte, v int64) []byte {
	if v < 0 {
		b = append(b, '-')
		v = -v
	}
	var tmp [20]byte
	i := len(tmp)
	for {
		i--
		tmp[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			break
		}
	}
	return append(b, tmp[i:]...)
}
