package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/accel"
)

// Excerpts of what Debian's QEMU 7.2 prints.
const (
	accelHelp = "Accelerators supported in QEMU binary:\ntcg\nkvm\n"
	machHelp  = "Supported machines are:\nmicrovm              microvm (i386)\npc                   Standard PC (alias of pc-i440fx-7.2)\nnone                 empty machine\n"
	devHelp   = "Storage devices:\nname \"virtio-blk-device\", bus virtio-bus\n\nMisc devices:\nname \"virtio-serial-device\", bus virtio-bus\nname \"virtserialport\", bus virtio-serial-bus\n"
)

func TestParseQEMUHelp(t *testing.T) {
	if got := parseAccelHelp(accelHelp); !slices.Equal(got, []string{"tcg", "kvm"}) {
		t.Errorf("accelerators = %q", got)
	}
	if got := parseMachineHelp(machHelp); !slices.Equal(got, []string{"microvm", "pc", "none"}) {
		t.Errorf("machines = %q", got)
	}
	if got := parseDeviceHelp(devHelp); !slices.Equal(got, []string{"virtio-blk-device", "virtio-serial-device", "virtserialport"}) {
		t.Errorf("devices = %q", got)
	}
}

// fakeQEMU writes an executable that answers the three help queries with
// the given texts.
func fakeQEMU(t *testing.T, accels, machines, devices string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range map[string]string{"accel": accels, "machine": machines, "device": devices} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// -L help lists a firmware dir with qboot.rom in it when there is one.
	fw := filepath.Join(dir, "firmware")
	if err := os.WriteFile(filepath.Join(dir, "L"), []byte("/nonexistent\n"+fw+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "qemu-fake")
	script := "#!/bin/sh\nexec cat \"" + dir + "/${1#-}\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

func TestCheckQEMUBuildNamesWhatIsMissing(t *testing.T) {
	ctx := context.Background()
	full := fakeQEMU(t, accelHelp, machHelp, devHelp)
	fw := filepath.Join(filepath.Dir(full), "firmware", Firmware)
	if err := os.MkdirAll(filepath.Dir(fw), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fw, []byte("rom"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := CheckQEMUBuild(ctx, full, accel.TCG); !c.OK || c.Warning || !strings.Contains(c.Info, "firmware "+fw) {
		t.Fatalf("a build with all a VM needs: %+v", c)
	}
	if got := FindFirmware(ctx, full, Firmware); got != fw {
		t.Errorf("FindFirmware = %q, want %q (the second of its dirs)", got, fw)
	}
	noBlk := strings.Replace(devHelp, "virtio-blk-device", "virtio-net-device", 1)
	c := CheckQEMUBuild(ctx, fakeQEMU(t, "Accelerators supported in QEMU binary:\nkvm\n", machHelp, noBlk), accel.TCG)
	if c.OK || !strings.Contains(c.Info, "the tcg accelerator") || !strings.Contains(c.Info, "the virtio-blk-device device") ||
		!strings.Contains(c.Info, "its accelerators: kvm") || !strings.Contains(c.Fix, "leave qemu_binary unset") {
		t.Fatalf("a build without TCG and the disk device: %+v; want both named, its accelerators and the fix", c)
	}
	if c := CheckQEMUBuild(ctx, fakeQEMU(t, accelHelp, "Supported machines are:\npc   Standard PC\n", devHelp), accel.KVM); c.OK || !strings.Contains(c.Info, "the microvm machine") {
		t.Fatalf("a build without microvm: %+v", c)
	}
	if c := CheckQEMUBuild(ctx, fakeQEMU(t, accelHelp, machHelp, devHelp), accel.TCG); !c.OK || !c.Warning || !strings.Contains(c.Info, Firmware+" is in none") {
		t.Fatalf("a build without %s: %+v; want a pass with a warning", Firmware, c)
	}
	if c := CheckQEMUBuild(ctx, filepath.Join(t.TempDir(), "missing"), accel.TCG); !c.OK || !strings.Contains(c.Info, "not checked") {
		t.Fatalf("no binary: %+v; want a pass that leaves it to the binary check", c)
	}
}

// TestCheckQEMUBuildDebian asks Debian's two QEMU builds, both in package
// qemu-system-x86: the full one runs VMs under either accelerator, the
// microvm one only under KVM.
func TestCheckQEMUBuildDebian(t *testing.T) {
	requireQEMU(t)
	ctx := context.Background()
	for _, a := range []accel.Kind{accel.TCG, accel.KVM} {
		if c := CheckQEMUBuild(ctx, "", a); !c.OK {
			t.Errorf("%s with %s: %+v", DefaultBinary, a, c)
		}
	}
	if c := CheckQEMUBuild(ctx, "", accel.TCG); c.Warning || !strings.Contains(c.Info, "firmware /") {
		t.Errorf("%s: %+v; want the firmware found (Debian ships %s in both its QEMU 7.2 and 10.0)", DefaultBinary, c, Firmware)
	}
	if _, err := exec.LookPath(MicrovmBinary); err != nil {
		t.Skipf("%s not installed beside %s: not a Debian/Ubuntu QEMU package", MicrovmBinary, DefaultBinary)
	}
	if c := CheckQEMUBuild(ctx, MicrovmBinary, accel.TCG); c.OK || !strings.Contains(c.Info, "the tcg accelerator") {
		t.Errorf("%s with tcg: %+v; want a failure naming TCG", MicrovmBinary, c)
	}
	if c := CheckQEMUBuild(ctx, MicrovmBinary, accel.KVM); !c.OK {
		t.Errorf("%s with kvm: %+v", MicrovmBinary, c)
	}
	if c := CheckQEMUBuild(ctx, "", accel.KVM); !strings.Contains(c.Info, MicrovmBinary+" is installed too") {
		t.Errorf("%s with kvm, %s beside it: %+v; want the hint", DefaultBinary, MicrovmBinary, c)
	}
}
