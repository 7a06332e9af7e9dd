package firecracker

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Names of the driver's preflight checks.
const (
	CheckBinary = "firecracker binary"
	CheckKVM    = "kvm"
	CheckKernel = "guest kernel"
	CheckInitrd = "guest initramfs"
)

// Fixes a user can run by hand.
const (
	FixInstall    = "install the firecracker binary from its release archive into PATH (Debian packages none), or use --sandbox qemu"
	FixKVM        = "run on a host with hardware virtualization (kvm_intel or kvm_amd loaded, /dev/kvm read-write), or use --sandbox qemu"
	FixBuildImage = "nex rootfs build (or: nex node preflight --sandbox firecracker --yes)"
)

// Preflight reports what the driver needs from the host: the Firecracker
// binary, usable KVM (Firecracker has no emulator to fall back to), and a
// readable guest image.
func (d *Driver) Preflight(ctx context.Context) []sandbox.Check {
	return []sandbox.Check{
		CheckFirecrackerBinary(ctx, d.cfg.Binary),
		CheckKVMUsable(accel.Detect()),
		sandbox.CheckReadable(CheckKernel, d.cfg.Kernel, FixBuildImage),
		sandbox.CheckReadable(CheckInitrd, d.cfg.Initrd, FixBuildImage),
	}
}

// CheckFirecrackerBinary finds the executable (name, or the default when
// empty) and asks it its version.
func CheckFirecrackerBinary(ctx context.Context, name string) sandbox.Check {
	if name == "" {
		name = DefaultBinary
	}
	c := sandbox.Check{Name: CheckBinary, Fix: FixInstall}
	bin, err := exec.LookPath(name)
	if err != nil {
		c.Info = name + " not found in PATH"
		return c
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		c.Info = fmt.Sprintf("%s --version failed: %v", bin, err)
		return c
	}
	version, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	c.OK, c.Info, c.Fix = true, bin+": "+version, ""
	return c
}

// CheckKVMUsable passes only with hardware KVM: a /dev/kvm that cannot run
// a stock guest (a PVM nested hypervisor) fails it.
func CheckKVMUsable(a accel.Choice) sandbox.Check {
	c := sandbox.Check{Name: CheckKVM}
	if !a.KVM() {
		c.Info, c.Fix = strings.TrimSuffix(a.Reason, "; using TCG"), FixKVM
		return c
	}
	c.OK, c.Info = true, a.Reason
	return c
}
