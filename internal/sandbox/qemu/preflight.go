package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"strings"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Names of the driver's preflight checks; package preflight attaches the
// fixes it can run to them.
const (
	CheckBinary      = "qemu binary"
	CheckAccel       = "accelerator"
	CheckKernel      = "guest kernel"
	CheckInitrd      = "guest initramfs"
	CheckSnapshotDir = "snapshot dir"
)

// Fixes a user can run by hand.
const (
	FixInstallQEMU = "apt-get install -y qemu-system-x86"
	FixBuildImage  = "nex rootfs build (or: nex node preflight --sandbox qemu --yes)"
)

// Preflight reports what the driver needs from the host: the QEMU binary,
// the accelerator (TCG always works; the check says which one and why), and
// a readable guest image.
func (d *Driver) Preflight(ctx context.Context) []sandbox.Check {
	checks := []sandbox.Check{CheckQEMUBinary(ctx, d.cfg.QEMUBinary), d.checkAccel()}
	checks = append(checks,
		sandbox.CheckReadable(CheckKernel, d.cfg.Kernel, FixBuildImage),
		sandbox.CheckReadable(CheckInitrd, d.cfg.Initrd, FixBuildImage))
	if d.cfg.Snapshot {
		checks = append(checks, sandbox.CheckWritableDir(CheckSnapshotDir, d.cfg.SnapshotDir))
	}
	return checks
}

// CheckQEMUBinary finds the QEMU executable (name, or the default when
// empty) and asks it its version.
func CheckQEMUBinary(ctx context.Context, name string) sandbox.Check {
	if name == "" {
		name = DefaultBinary
	}
	c := sandbox.Check{Name: CheckBinary, Fix: FixInstallQEMU}
	bin, err := exec.LookPath(name)
	if err != nil {
		c.Info = fmt.Sprintf("%s not found in PATH", name)
		return c
	}
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		c.Info = fmt.Sprintf("%s --version failed: %v", bin, err)
		return c
	}
	version, _, _ := strings.Cut(string(out), "\n")
	c.OK, c.Info, c.Fix = true, bin+": "+strings.TrimSpace(version), ""
	return c
}

// checkAccel passes with TCG (slower, but it works); it fails only when KVM
// was forced on a host where it is unusable.
func (d *Driver) checkAccel() sandbox.Check {
	c := sandbox.Check{Name: CheckAccel, OK: true, Info: string(d.accel.Accel) + ": " + d.accel.Reason}
	if d.accel.Accel == accel.KVM {
		if real := accel.Detect(); !real.KVM() {
			c.OK, c.Info = false, "kvm forced by config, but "+real.Reason
			c.Fix = "remove the forced accelerator (TCG is used then), or load kvm_intel/kvm_amd and give access to /dev/kvm"
		}
	}
	return c
}
