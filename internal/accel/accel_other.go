//go:build !linux

package accel

import "runtime"

// Detect makes the choice for this host: KVM exists only on Linux.
func Detect() Choice {
	return Choice{TCG, "no KVM on " + runtime.GOOS + "; using TCG"}
}
