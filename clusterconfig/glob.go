package clusterconfig

import (
	"errors"
	"regexp"
	"strings"
)

// matcher is a compiled Namespace.Match.
type matcher struct{ re *regexp.Regexp }

func (m matcher) match(channel string) bool { return m.re.MatchString(channel) }

// compileGlob turns a namespace glob into an anchored regular expression:
// "**" as a whole segment is one or more segments, '*' is any run of
// characters other than '.', the rest is literal.
func compileGlob(glob string) (matcher, error) {
	if glob == "" {
		return matcher{}, errors.New("must not be empty")
	}
	if len(glob) > 256 {
		return matcher{}, errors.New("longer than 256 bytes")
	}
	segs := strings.Split(glob, ".")
	parts := make([]string, len(segs))
	for i, s := range segs {
		switch {
		case s == "":
			return matcher{}, errors.New("has an empty segment (two dots, or a dot at an end)")
		case s == "**":
			parts[i] = `[^.]+(?:\.[^.]+)*`
		case s == "*":
			parts[i] = `[^.]+`
		case strings.Contains(s, "**"):
			return matcher{}, errors.New(`"**" must be a whole segment, as in "rooms.**"`)
		default:
			lit := strings.Split(s, "*")
			for j := range lit {
				lit[j] = regexp.QuoteMeta(lit[j])
			}
			parts[i] = strings.Join(lit, `[^.]*`)
		}
	}
	re, err := regexp.Compile(`^` + strings.Join(parts, `\.`) + `$`)
	if err != nil {
		return matcher{}, err
	}
	return matcher{re: re}, nil
}
