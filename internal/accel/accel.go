// Package accel decides how a VM sandbox is accelerated on this host: KVM
// when the host really has it, otherwise QEMU's software emulator (TCG).
//
// A /dev/kvm node is not proof of usable KVM: a PVM nested hypervisor
// (kvm_pvm) provides /dev/kvm but hangs or aborts a stock guest kernel, so KVM
// is chosen only when kvm_intel or kvm_amd is loaded and /dev/kvm opens
// read-write.
package accel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Kind is an accelerator as QEMU names it (-accel <kind>).
type Kind string

// Accelerators.
const (
	KVM Kind = "kvm"
	TCG Kind = "tcg"
)

// Choice is the accelerator picked for this host and why, in words a user
// can act on.
type Choice struct {
	Accel  Kind
	Reason string
}

// KVM reports whether hardware virtualization is usable.
func (c Choice) KVM() bool { return c.Accel == KVM }

// The kernel modules that make /dev/kvm run stock guests, in the order they
// are looked for.
var hardwareModules = []string{"kvm_intel", "kvm_amd"}

// DetectAt makes the choice for a host whose filesystem is rooted at root
// ("/" for the real one; tests pass a fake tree). It reads a few sysfs
// entries and opens /dev/kvm once, well under a millisecond.
func DetectAt(root string) Choice {
	dev := filepath.Join(root, "dev", "kvm")
	module := ""
	for _, m := range hardwareModules {
		if exists(filepath.Join(root, "sys", "module", m)) {
			module = m
			break
		}
	}
	if module == "" {
		switch {
		case exists(filepath.Join(root, "sys", "module", "kvm_pvm")):
			return Choice{TCG, "kvm_pvm nested hypervisor cannot run a stock kernel; using TCG"}
		case exists(dev):
			return Choice{TCG, "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded; using TCG"}
		default:
			return Choice{TCG, "no KVM on this host (no /dev/kvm, no kvm_intel or kvm_amd); using TCG"}
		}
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return Choice{TCG, fmt.Sprintf("%s is loaded but /dev/kvm cannot be opened read-write (%s); using TCG", module, openReason(err))}
	}
	f.Close()
	return Choice{KVM, module + " is loaded and /dev/kvm opens read-write; using KVM"}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// openReason shortens an open error to its cause, since the path is already
// in the sentence.
func openReason(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
