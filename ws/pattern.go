package ws

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// Pattern subscriptions: {"op":"psubscribe","pattern":"news.*"} subscribes
// to every channel the Redis glob pattern matches (fanout.Client.PSubscribe
// underneath, one per pattern for the whole gateway, as for channels).
// Their message frames carry "pattern" beside "channel", and no pos:
// history and resume do not apply to patterns.
//
// Authorization (docs/protocol.md) must hold for every channel the pattern
// can match, and is decided conservatively, without enumerating channels:
//
//  1. The pattern obeys the channel name rules (length, characters).
//  2. A pattern without any special character (* ? [ \) is one channel,
//     authorized as a subscribe to it.
//  3. Otherwise every namespace the pattern may reach must allow
//     subscribes: the implicit default namespace always (a pattern with a
//     wildcard can match a channel no namespace matches, such as one with
//     an empty segment), and each configured namespace unless the literal
//     prefixes of its match glob and of the pattern differ. A namespace
//     with allow_subscribe none refuses the pattern.
//  4. If one of those namespaces is token (not anonymous), one subscribe
//     claim of the principal must cover the pattern: every string the
//     pattern matches is matched by the claim glob (MatchGlob), decided by
//     aligning the two (patternCovered). A class [...] counts as any byte.
//     API keys and an insecure gateway cover everything.

// psubscribe subscribes the session to f.Pattern.
func (s *session) psubscribe(f Frame) *Error {
	l := s.h.limits()
	if e := s.h.authorizePattern(l, f.ID, s.principal(), f.Pattern); e != nil {
		return e
	}
	key := patternKey(f.Pattern)
	if _, ok := s.subs[key]; ok {
		s.reply(&outFrame{b: okFrame(f.ID), reply: true})
		return nil
	}
	if e := s.checkSubscriptionLimit(l, f.ID); e != nil {
		return e
	}
	ch, err := s.h.hub.subscribe(s.ctx, s, key, func(string) *outFrame { return &outFrame{b: okFrame(f.ID), reply: true} })
	if err != nil {
		if s.ctx.Err() != nil {
			return nil // closing: no reply needed
		}
		return &Error{Code: CodeUnavailable, Message: "psubscribe failed: " + err.Error(), ID: f.ID}
	}
	s.subs[key] = ch
	s.h.metrics.subscriptions.Inc()
	return nil
}

func (s *session) punsubscribe(f Frame) *Error {
	if e := s.h.checkChannel(f.ID, f.Pattern); e != nil {
		return e
	}
	s.leave(patternKey(f.Pattern))
	return nil
}

// patternSpecials are the bytes that make a Redis pattern match more than
// itself.
const patternSpecials = `*?[\`

// authorizePattern applies the rule above to p's psubscribe of pattern.
func (h *Handler) authorizePattern(l *limits, id json.RawMessage, p *Principal, pattern string) *Error {
	if e := h.checkChannel(id, pattern); e != nil {
		return e
	}
	if !strings.ContainsAny(pattern, patternSpecials) {
		_, e := h.checkAccess(l, id, p, OpSubscribe, pattern)
		return e
	}
	needClaims := false
	for _, ns := range patternNamespaces(l.doc, pattern) {
		switch ns.AllowSubscribe {
		case clusterconfig.AccessAnonymous:
		case clusterconfig.AccessNone:
			h.metrics.namespaceRefusals.WithLabelValues(OpSubscribe).Inc()
			return &Error{Code: CodeForbidden, ID: id, Message: fmt.Sprintf(
				"pattern %s can match channels of namespace %q, which allows subscribe to none", pattern, ns.Match)}
		default:
			needClaims = true
		}
	}
	if !needClaims || p.All {
		return nil
	}
	for _, claim := range p.Subscribe {
		if patternCovered(claim, pattern) {
			return nil
		}
	}
	return &Error{Code: CodeForbidden, ID: id, Message: "not allowed to psubscribe to " + pattern +
		": no subscribe claim covers every channel it can match"}
}

// patternNamespaces are the namespaces whose channels pattern may match:
// the default one, and each configured one whose match glob's literal
// prefix does not exclude it.
func patternNamespaces(doc *clusterconfig.Document, pattern string) []clusterconfig.Namespace {
	pp := literalPrefix(pattern, patternSpecials)
	out := []clusterconfig.Namespace{clusterconfig.DefaultNamespace}
	for _, ns := range doc.Namespaces {
		np := literalPrefix(ns.Match, "*")
		if strings.HasPrefix(np, pp) || strings.HasPrefix(pp, np) {
			out = append(out, ns)
		}
	}
	return out
}

func literalPrefix(s, specials string) string {
	if i := strings.IndexAny(s, specials); i >= 0 {
		return s[:i]
	}
	return s
}

// patternToken is one element of a Redis pattern: a literal byte, any
// byte (? and classes), or any string (*).
type patternToken struct {
	kind byte // 'l' literal, '?' any byte, '*' any string
	b    byte
}

// parsePattern reads a Redis glob pattern: \x is the literal x, [...] a
// class (read as any byte: conservative), ? any byte, * any string.
func parsePattern(p string) []patternToken {
	var t []patternToken
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '*':
			if len(t) == 0 || t[len(t)-1].kind != '*' {
				t = append(t, patternToken{kind: '*'})
			}
		case '?':
			t = append(t, patternToken{kind: '?'})
		case '[':
			// Up to the closing bracket (Redis reads an unclosed class to
			// the end); \ escapes inside.
			for i++; i < len(p) && p[i] != ']'; i++ {
				if p[i] == '\\' {
					i++
				}
			}
			t = append(t, patternToken{kind: '?'})
		case '\\':
			if i+1 < len(p) {
				i++
			}
			t = append(t, patternToken{kind: 'l', b: p[i]})
		default:
			t = append(t, patternToken{kind: 'l', b: c})
		}
	}
	return t
}

// patternCovered reports whether every channel the Redis pattern matches
// also matches claim (MatchGlob: '*' any run of bytes, the rest literal).
// It looks for an alignment in which each '*' of the claim absorbs a run
// of pattern tokens (literals, any byte, any string) and each literal of
// the claim equals a literal of the pattern: when one exists the claim
// covers the pattern. It may say false for a pattern some odd claim does
// cover (it never says true for one it does not): the refusal is then
// explicit, never a leak.
func patternCovered(claim, pattern string) bool {
	t := parsePattern(pattern)
	g := claim
	// memo[i][j]: 0 unknown, 1 true, 2 false, for claim[i:] and t[j:].
	memo := make([][]byte, len(g)+1)
	for i := range memo {
		memo[i] = make([]byte, len(t)+1)
	}
	var covers func(i, j int) bool
	covers = func(i, j int) bool {
		if m := memo[i][j]; m != 0 {
			return m == 1
		}
		var r bool
		switch {
		case j == len(t):
			r = strings.Trim(g[i:], "*") == ""
		case i == len(g):
			r = false
		case g[i] == '*':
			// The star absorbs token j and stays, or is done.
			r = covers(i, j+1) || covers(i+1, j)
		default:
			r = t[j].kind == 'l' && t[j].b == g[i] && covers(i+1, j+1)
		}
		memo[i][j] = 2
		if r {
			memo[i][j] = 1
		}
		return r
	}
	return covers(0, 0)
}
