package ws

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzDecodeFrame: any bytes decode to a well-formed Frame or to a
// bad_request *Error, never a panic, and every reply built from the result
// is valid JSON.
func FuzzDecodeFrame(f *testing.F) {
	for _, s := range []string{
		`{"op":"subscribe","channel":"news","id":1}`,
		`{"op":"unsubscribe","channel":"news","id":2}`,
		`{"op":"publish","channel":"news","data":{"a":[1,2,{"b":null}]},"id":3}`,
		`{"op":"publish","channel":"news","data":null,"id":"x"}`,
		`{"op":"ping","id":4}`,
		`{"op":"ping","id":-1.5e300}`,
		`{"op":"ping","id":{"a":1}}`,
		`{"op":5}`,
		`{"op":"subscribe","channel":7}`,
		`{"OP":"ping"}`,
		`[]`, `null`, ``, `{`, "\xff\xfe", `{"op":"ping","id":"` + string(make([]byte, 100)) + `"}`,
		` {"op":"ping"} `,
		`{"op":"publish","channel":"a","data":1,"data":2}`,
		`{"op":"subscribe","channel":"h.a","since":"p1.AAAA","id":5}`,
		`{"op":"subscribe","channel":"h.a","since":7}`,
		`{"op":"history","channel":"h.a","since":"p1.AAAA","limit":100,"reverse":true,"id":6}`,
		`{"op":"history","channel":"h.a","limit":-1}`,
		`{"op":"history","channel":"h.a","limit":1.5}`,
		`{"op":"history","channel":"h.a","limit":1e40}`,
		`{"op":"history","channel":"h.a","reverse":"yes"}`,
		`{"op":"history"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := DecodeFrame(b)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest || e.Message == "" {
				t.Fatalf("DecodeFrame(%q): error %#v, want a bad_request *Error", b, err)
			}
			if out := errorFrame(e); !json.Valid(out) {
				t.Fatalf("error frame %q is not JSON", out)
			}
			if e.ID != nil && !validID(e.ID) {
				t.Fatalf("error echoes id %q", e.ID)
			}
			return
		}
		switch fr.Op {
		case OpPing:
		case OpSubscribe, OpUnsubscribe, OpPublish, OpHistory:
			if fr.Channel == "" {
				t.Fatalf("DecodeFrame(%q): %s without a channel", b, fr.Op)
			}
			if fr.Limit < 0 || fr.Op != OpHistory && (fr.Limit != 0 || fr.Reverse) ||
				fr.Since != "" && fr.Op != OpSubscribe && fr.Op != OpHistory {
				t.Fatalf("DecodeFrame(%q): %s with since %q, limit %d, reverse %v", b, fr.Op, fr.Since, fr.Limit, fr.Reverse)
			}
		default:
			t.Fatalf("DecodeFrame(%q): op %q", b, fr.Op)
		}
		if fr.Op == OpPublish && !json.Valid(fr.Data) {
			t.Fatalf("DecodeFrame(%q): data %q is not JSON", b, fr.Data)
		}
		if fr.ID != nil && !validID(fr.ID) {
			t.Fatalf("DecodeFrame(%q): id %q", b, fr.ID)
		}
		for _, out := range [][]byte{okFrame(fr.ID), subscribedFrame(fr.ID, fr.Since), resumedFrame(fr.ID, fr.Reverse, fr.Limit)} {
			if !json.Valid(out) {
				t.Fatalf("ok frame %q is not JSON", out)
			}
		}
		if fr.Op == OpPublish {
			if out := encodeMessage(fr.Channel, fr.Data, "id-1", time.UnixMilli(1), fr.Since); !json.Valid(out) {
				t.Fatalf("message frame %q is not JSON", out)
			}
		}
	})
}

func validID(id json.RawMessage) bool {
	if len(id) > maxIDBytes || !json.Valid(id) {
		return false
	}
	var v any
	json.Unmarshal(id, &v)
	switch v.(type) {
	case float64, string:
		return true
	}
	return false
}

// TestEncodeMessageChannel: a channel name with characters JSON must escape
// still makes a valid frame.
func TestEncodeMessageChannel(t *testing.T) {
	t.Parallel()
	out := encodeMessage(`we"ird\<>&`, []byte(`{"a":1}`), `id"1`, time.UnixMilli(1700000000000), "")
	var f frame
	if err := json.Unmarshal(out, &f); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if f.Channel != `we"ird\<>&` || f.TS != 1700000000000 || string(f.Data) != `{"a":1}` {
		t.Fatalf("decoded %+v", f)
	}
}

// FuzzEncodeMessage: whatever a node carries (any payload; any channel and
// id, though the hub only has validated ones), the message frame is valid
// UTF-8 and valid JSON, so no browser closes the connection over it; its
// fields decode to what was given, and a payload that is valid UTF-8 JSON
// is sent unchanged.
func FuzzEncodeMessage(f *testing.F) {
	for _, s := range []struct{ channel, payload, id string }{
		{"news", `{"a":[1,2,{"b":null}]}`, "9f3c2a41d0e5b7c8-42"},
		{"news", "{\"t\":\"\xff\xfe\"}", ""},
		{"news", "[\"a\xc3\",\"\xed\xa0\x80\"]", "x"},
		{"news", "not json \xff", ""},
		{"we\"ird\\", `"\ud800"`, `id"1`},
		{"a\xffb", "", "\x00"},
		{"news", " 42 ", "1"},
	} {
		f.Add(s.channel, []byte(s.payload), s.id, int64(1700000000000))
	}
	f.Fuzz(func(t *testing.T, channel string, payload []byte, id string, ms int64) {
		var ts time.Time
		if ms != 0 {
			ts = time.UnixMilli(ms)
		}
		// The id doubles as the position: both are strings the frame
		// carries as given.
		out := encodeMessage(channel, payload, id, ts, id)
		if !utf8.Valid(out) {
			t.Fatalf("encodeMessage(%q, %q): frame %q is not valid UTF-8", channel, payload, out)
		}
		if !json.Valid(out) {
			t.Fatalf("encodeMessage(%q, %q): frame %q is not JSON", channel, payload, out)
		}
		var fr frame
		if err := json.Unmarshal(out, &fr); err != nil {
			t.Fatalf("frame %q: %v", out, err)
		}
		var gotID string
		json.Unmarshal(fr.ID, &gotID)
		if fr.Op != OpMessage || utf8.ValidString(channel) && fr.Channel != channel ||
			utf8.ValidString(id) && (gotID != id || fr.Pos != id) || !ts.IsZero() && fr.TS != ts.UnixMilli() {
			t.Fatalf("encodeMessage(%q, %q, %q, %v) decodes to %+v", channel, payload, id, ts, fr)
		}
		if json.Valid(payload) && utf8.Valid(payload) && string(fr.Data) != string(bytes.TrimSpace(payload)) {
			t.Fatalf("valid payload %q sent as %s", payload, fr.Data)
		}
	})
}
