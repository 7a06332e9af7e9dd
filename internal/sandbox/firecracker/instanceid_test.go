package firecracker

import (
	"strings"
	"testing"
)

func TestIsInstanceID(t *testing.T) {
	for id, want := range map[string]bool{
		"":                      false,
		"vm-1":                  true,
		"ABCdef-0123":           true,
		strings.Repeat("a", 64): true,
		strings.Repeat("a", 65): false,
		"vm_1":                  false,
		"vm.1":                  false,
		"vm 1":                  false,
	} {
		if got := isInstanceID(id); got != want {
			t.Errorf("isInstanceID(%q) = %v, want %v", id, got, want)
		}
	}
}
