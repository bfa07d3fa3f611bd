package ws

import (
	"errors"
	"strings"

	"github.com/pubmesh/pubmesh/clusterconfig"
)

// CodeSubjectMismatch refuses a refresh whose token is for another subject
// than the session's (or a refresh of a session not made with a token).
const CodeSubjectMismatch = "subject_mismatch"

// refresh replaces the session's token with f.Token, of the same subject,
// before the old one expires (docs/protocol.md):
//
//   - an invalid or expired token: error unauthorized, the session keeps
//     its token (and closes with 4001 at its exp, as before);
//   - a token for another subject, or a session opened with an API key,
//     without a credential or on an insecure gateway: error
//     subject_mismatch;
//   - otherwise the new claims apply at once: each subscription they no
//     longer allow is ended with an unsubscribed frame
//     ({"op":"unsubscribed","channel":"c","code":"forbidden",…}, "pattern"
//     instead of "channel" for a pattern), then the ok; the expiry moves to
//     the new token's exp.
func (s *session) refresh(f Frame) *Error {
	h := s.h
	old := s.principal()
	p, err := h.auth.check(f.Token)
	if err != nil || h.auth.open {
		reason := "invalid"
		var ae *authError
		if errors.As(err, &ae) {
			reason = ae.reason
		}
		h.metrics.refreshes.WithLabelValues("invalid").Inc()
		h.metrics.authFailures.WithLabelValues(reason).Inc()
		msg := "refresh needs a token"
		if err != nil {
			msg = err.Error()
		}
		return &Error{Code: CodeUnauthorized, Message: msg, ID: f.ID}
	}
	if old.Kind != "jwt" || p.Kind != "jwt" || p.Subject != old.Subject {
		h.metrics.refreshes.WithLabelValues("subject").Inc()
		return &Error{Code: CodeSubjectMismatch, ID: f.ID, Message: "refresh must keep the subject: the session is " +
			old.Kind + " " + quote(old.Subject) + ", the token " + p.Kind + " " + quote(p.Subject)}
	}
	s.p.Store(p)
	s.setExpiry(p.ExpiresAt)
	l := h.limits()
	for key := range s.subs {
		if claimsAllow(l, p, key) {
			continue
		}
		s.leave(key)
		name, isPattern := patternOf(key)
		field := "pattern"
		if !isPattern {
			name, field = key, "channel"
		}
		b := openReply(OpUnsubscribed, nil, 64+len(name))
		b = append(b, `,"`+field+`":`...)
		b = appendString(b, name)
		b = append(b, `,"code":"forbidden","message":`...)
		b = appendString(b, "the refreshed token does not allow subscribing to "+name)
		s.reply(&outFrame{b: append(b, '}')})
	}
	h.metrics.refreshes.WithLabelValues("ok").Inc()
	s.log.Debug("ws: token refreshed", "exp", p.ExpiresAt)
	return nil
}

// claimsAllow reports whether p's claims still allow the subscription
// under key. Only the claims are checked: a namespace closed since the
// subscribe does not end it (as for a configuration change).
func claimsAllow(l *limits, p *Principal, key string) bool {
	pattern, isPattern := patternOf(key)
	if !isPattern || !strings.ContainsAny(pattern, patternSpecials) {
		if isPattern {
			key = pattern
		}
		return l.doc.For(key).AllowSubscribe != clusterconfig.AccessToken || p.CanSubscribe(key)
	}
	needClaims := false
	for _, ns := range patternNamespaces(l.doc, pattern) {
		if ns.AllowSubscribe == clusterconfig.AccessToken {
			needClaims = true
		}
	}
	if !needClaims || p.All {
		return true
	}
	for _, c := range p.Subscribe {
		if patternCovered(c, pattern) {
			return true
		}
	}
	return false
}

func quote(s string) string { return `"` + s + `"` }
