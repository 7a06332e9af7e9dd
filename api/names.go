package api

import "strings"

// Names are checked with loops, not regular expressions: every nex process
// runs every package's initialization, including a microVM's PID 1 and its
// agent under emulation, where compiling a pattern at start-up is
// measurable.

// IsWorkloadName reports whether s is a workload name the protocol allows
// (the workload JWT's sub): one or more letters, digits, '_' and '-'.
func IsWorkloadName(s string) bool { return s != "" && onlyNameChars(s, "_-") }

// IsSHA256Hex reports whether s is a sha256 digest in lower-case hex, as
// the workload JWT's data.hash carries it.
func IsSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// onlyNameChars reports whether s holds only ASCII letters, digits and the
// bytes of extra.
func onlyNameChars(s, extra string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			continue
		}
		if strings.IndexByte(extra, c) < 0 {
			return false
		}
	}
	return true
}

// OnlyNameChars reports whether s is non-empty and holds only ASCII
// letters, digits and the bytes of extra (tag keys, instance ids).
func OnlyNameChars(s, extra string) bool { return s != "" && onlyNameChars(s, extra) }
