package api

import (
	"regexp"
	"strings"
	"testing"
)

// The loops must agree with the patterns the protocol states.
func TestNamesAgreeWithTheirPatterns(t *testing.T) {
	name := regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
	hash := regexp.MustCompile(`^[0-9a-f]{64}$`)
	tag := regexp.MustCompile(`^[a-zA-Z0-9_.-]+$`)
	inputs := []string{"", "echo", "Echo_1-x", "a.b", "a b", "a/b", "é", "x\n", "-", "_", ".",
		strings.Repeat("a", 64), strings.Repeat("f", 63), strings.Repeat("0", 65), strings.Repeat("A", 64),
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg"}
	for _, s := range inputs {
		if got, want := IsWorkloadName(s), name.MatchString(s); got != want {
			t.Errorf("IsWorkloadName(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := IsSHA256Hex(s), hash.MatchString(s); got != want {
			t.Errorf("IsSHA256Hex(%q) = %v, pattern says %v", s, got, want)
		}
		if got, want := OnlyNameChars(s, "_.-"), tag.MatchString(s); got != want {
			t.Errorf("OnlyNameChars(%q, \"_.-\") = %v, pattern says %v", s, got, want)
		}
	}
}
