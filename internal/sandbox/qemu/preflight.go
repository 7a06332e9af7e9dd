package qemu

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Names of the driver's preflight checks; package preflight attaches the
// fixes it can run to them.
const (
	CheckBinary      = "qemu binary"
	CheckBuild       = "qemu build"
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
	checks := []sandbox.Check{
		CheckQEMUBinary(ctx, d.cfg.QEMUBinary),
		CheckQEMUBuild(ctx, d.cfg.QEMUBinary, d.accel.Accel),
		d.checkAccel(),
	}
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

// MicrovmBinary is the build of QEMU that Debian and Ubuntu ship beside the
// full one, with the microvm machine and its devices only. It has KVM and
// no TCG. On KVM hosts it starts in half the time, since it loads a fifth of
// the libraries (docs/CONFIG.md, qemu_binary).
const MicrovmBinary = "qemu-system-x86_64-microvm"

// neededDevices are the devices every nex VM has: the virtio-serial ports of
// its host channels and the stage disk.
var neededDevices = []string{"virtio-serial-device", "virtserialport", "virtio-blk-device"}

// CheckQEMUBuild asks the QEMU executable (name, or the default when empty)
// what it was built with, and fails when it lacks something a nex VM needs:
// the accelerator a, the microvm machine or one of neededDevices. Without
// this check, such a build would fail every boot with a QEMU message.
// When the binary is missing it passes: CheckQEMUBinary reports that.
func CheckQEMUBuild(ctx context.Context, name string, a accel.Kind) sandbox.Check {
	if name == "" {
		name = DefaultBinary
	}
	c := sandbox.Check{Name: CheckBuild}
	bin, err := exec.LookPath(name)
	if err != nil {
		c.OK, c.Info = true, "not checked: no QEMU binary (see "+CheckBinary+")"
		return c
	}
	b, err := probeBuild(ctx, bin)
	if err != nil {
		c.Info = err.Error()
		c.Fix = "check that " + bin + " runs (" + FixInstallQEMU + ")"
		return c
	}
	if missing := b.missing(a); len(missing) > 0 {
		c.Info = fmt.Sprintf("%s lacks %s (its accelerators: %s)", bin, strings.Join(missing, ", "), strings.Join(b.accels, ", "))
		c.Fix = fmt.Sprintf("leave qemu_binary unset to use %s (%s), or name a QEMU build that has them", DefaultBinary, FixInstallQEMU)
		return c
	}
	c.OK = true
	c.Info = fmt.Sprintf("%s: %s, microvm machine, %s", filepath.Base(bin), a, strings.Join(neededDevices, ", "))
	if fw := FindFirmware(ctx, bin, Firmware); fw != "" {
		c.Info += ", firmware " + fw
	} else {
		c.Warning, c.Info = true, c.Info+"; "+noFirmware
		c.Fix = "install QEMU's " + Firmware + " (Debian: " + FixInstallQEMU + ")"
	}
	if a == accel.KVM && filepath.Base(bin) != MicrovmBinary {
		if fast, err := exec.LookPath(MicrovmBinary); err == nil {
			if fb, err := probeBuild(ctx, fast); err == nil && len(fb.missing(a)) == 0 {
				c.Info += fmt.Sprintf("; %s is installed too and starts in about half the time (qemu_binary: %q)", MicrovmBinary, MicrovmBinary)
			}
		}
	}
	return c
}

// build is what a QEMU executable says it has.
type build struct {
	accels, machines, devices []string
}

// missing lists what a VM needs, with accelerator a, that b lacks.
func (b build) missing(a accel.Kind) []string {
	var m []string
	if !slices.Contains(b.accels, string(a)) {
		m = append(m, "the "+string(a)+" accelerator")
	}
	if !slices.Contains(b.machines, "microvm") {
		m = append(m, "the microvm machine")
	}
	for _, d := range neededDevices {
		if !slices.Contains(b.devices, d) {
			m = append(m, "the "+d+" device")
		}
	}
	return m
}

// probeBuild runs bin's -accel, -machine and -device help.
func probeBuild(ctx context.Context, bin string) (build, error) {
	var b build
	for _, q := range []struct {
		flag  string
		parse func(string) []string
		into  *[]string
	}{
		{"-accel", parseAccelHelp, &b.accels},
		{"-machine", parseMachineHelp, &b.machines},
		{"-device", parseDeviceHelp, &b.devices},
	} {
		out, err := exec.CommandContext(ctx, bin, q.flag, "help").Output()
		if err != nil {
			return build{}, fmt.Errorf("%s %s help: %v", bin, q.flag, err)
		}
		*q.into = q.parse(string(out))
	}
	return b, nil
}

// parseAccelHelp reads "-accel help": a heading, then one name per line.
func parseAccelHelp(out string) []string {
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasSuffix(l, ":") {
			names = append(names, l)
		}
	}
	return names
}

// parseMachineHelp reads "-machine help": a heading, then lines that start
// with a machine's name.
func parseMachineHelp(out string) []string {
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 1 && !strings.HasSuffix(l, ":") {
			names = append(names, f[0])
		}
	}
	return names
}

// parseDeviceHelp reads "-device help": lines of the form
// `name "virtio-blk-device", bus virtio-bus`, under category headings.
func parseDeviceHelp(out string) []string {
	var names []string
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, `name "`); ok {
			if name, _, ok := strings.Cut(rest, `"`); ok {
				names = append(names, name)
			}
		}
	}
	return names
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
