package clusterconfig

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a time.Duration written as a Go duration string ("25s",
// "1h30m") in documents.
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New("want a duration such as \"25s\"")
	}
	return d.decode(s)
}

func (d *Duration) decode(v any) error {
	s, ok := v.(string)
	if !ok {
		return errors.New("want a duration such as \"25s\"")
	}
	p, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration such as \"25s\"")
	}
	*d = Duration(p)
	return nil
}

// String returns the Go duration string.
func (d Duration) String() string { return time.Duration(d).String() }

// ByteSize is a size in bytes, written as a number or with a kb, mb or gb
// suffix (1024-based) as in redis.conf.
type ByteSize int64

func (b *ByteSize) decode(v any) error {
	switch x := v.(type) {
	case string:
		n, err := ParseSize(x)
		if err != nil {
			return err
		}
		*b = ByteSize(n)
		return nil
	default:
		n, ok := integer(v)
		if !ok || n < 0 {
			return errors.New("want a size in bytes, a number or such as \"512mb\"")
		}
		*b = ByteSize(n)
		return nil
	}
}

// UnmarshalJSON reads a number or a size string.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return err
	}
	return b.decode(v)
}

// ParseSize parses a size in bytes, with an optional b, kb, mb or gb suffix
// (1024-based, any case), such as "64mb".
func ParseSize(s string) (int64, error) {
	mult := int64(1)
	ls := strings.ToLower(strings.TrimSpace(s))
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"gb", 1 << 30}, {"mb", 1 << 20}, {"kb", 1 << 10}, {"b", 1}} {
		if strings.HasSuffix(ls, u.suffix) {
			ls, mult = strings.TrimSuffix(ls, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(ls, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q: want bytes, or a number with kb, mb or gb", s)
	}
	return n * mult, nil
}

// BufferLimit is a Redis client-output-buffer-limit: a client is
// disconnected when its pending output reaches Hard, or stays above Soft for
// SoftFor. In documents it is the redis.conf string "HARD SOFT SECONDS".
type BufferLimit struct {
	Hard    int64         // bytes
	Soft    int64         // bytes
	SoftFor time.Duration // whole seconds
}

// String renders the limit as redis.conf wants it after "pubsub".
func (b BufferLimit) String() string {
	return fmt.Sprintf("%d %d %d", b.Hard, b.Soft, int64(b.SoftFor/time.Second))
}

// MarshalJSON writes the redis.conf string.
func (b BufferLimit) MarshalJSON() ([]byte, error) { return json.Marshal(b.String()) }

// UnmarshalJSON reads the redis.conf string.
func (b *BufferLimit) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return errors.New(`want "HARD SOFT SECONDS", e.g. "64mb 16mb 60"`)
	}
	return b.decode(s)
}

func (b *BufferLimit) decode(v any) error {
	s, ok := v.(string)
	if !ok {
		return errors.New(`want "HARD SOFT SECONDS", e.g. "64mb 16mb 60"`)
	}
	p, err := ParseBufferLimit(s)
	if err != nil {
		return err
	}
	*b = p
	return nil
}

// ParseBufferLimit parses "HARD SOFT SECONDS" as in redis.conf, with sizes
// in bytes or with a kb/mb/gb suffix (1024-based), e.g. "64mb 16mb 60".
func ParseBufferLimit(s string) (BufferLimit, error) {
	bad := fmt.Errorf("buffer limit %q: want \"HARD SOFT SECONDS\", e.g. \"64mb 16mb 60\"", s)
	f := strings.Fields(s)
	if len(f) != 3 {
		return BufferLimit{}, bad
	}
	hard, err1 := ParseSize(f[0])
	soft, err2 := ParseSize(f[1])
	secs, err3 := strconv.ParseInt(f[2], 10, 64)
	if errors.Join(err1, err2, err3) != nil || secs < 0 || secs > 1<<31 {
		return BufferLimit{}, bad
	}
	return BufferLimit{Hard: hard, Soft: soft, SoftFor: time.Duration(secs) * time.Second}, nil
}

// integer returns v as an int64 when it is a whole number: documents come
// from YAML (ints) or JSON (float64).
func integer(v any) (int64, bool) {
	switch x := v.(type) {
	case int:
		return int64(x), true
	case int64:
		return x, true
	case uint64:
		return int64(x), x <= 1<<62
	case float64:
		if x != float64(int64(x)) || x > 1<<62 || x < -(1<<62) {
			return 0, false
		}
		return int64(x), true
	}
	return 0, false
}
