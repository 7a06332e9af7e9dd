//go:build !linux

package vminit

import (
	"fmt"
	"os"
)

// Wanted is false off Linux: a guest is always Linux.
func Wanted() bool { return false }

// Main exists so the binary builds everywhere; it is never called off Linux.
func Main() {
	fmt.Fprintln(os.Stderr, "nex: the VM init runs only on Linux")
	os.Exit(1)
}
