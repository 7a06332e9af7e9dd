package preflight

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

func names(checks []Check) string {
	var n []string
	for _, c := range checks {
		n = append(n, c.Name)
	}
	return strings.Join(n, ", ")
}

func TestChecksPerSandbox(t *testing.T) {
	tests := []struct {
		sandbox string
		want    string
	}{
		{"process", "free disk, state dir"},
		{"qemu", "qemu binary, qemu build, accelerator, guest kernel, guest initramfs, guest agent, snapshot dir, free disk, state dir"},
		{"auto", "qemu binary, qemu build, accelerator, guest kernel, guest initramfs, guest agent, snapshot dir, free disk, state dir"},
		{"firecracker", "firecracker, kvm, guest kernel, guest initramfs, guest agent, free disk, state dir"},
	}
	for _, tt := range tests {
		if got := names(Checks(Options{Sandbox: tt.sandbox, DataDir: t.TempDir()})); got != tt.want {
			t.Errorf("%s checks: %s, want %s", tt.sandbox, got, tt.want)
		}
	}
}

// fakeImage lays out an image as `nex rootfs build` leaves it.
func fakeImage(t *testing.T, dataDir, hash string) (kernel, initrd string) {
	t.Helper()
	dir := filepath.Join(dataDir, "images", hash)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	kernel, initrd = filepath.Join(dir, guestimage.KernelFile), filepath.Join(dir, guestimage.InitrdFile)
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("not empty"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd
}

func find(r Report, name string) sandbox.Check {
	for _, c := range r {
		if c.Name == name {
			return c
		}
	}
	return sandbox.Check{Name: name, Info: "missing from report"}
}

func TestImageChecks(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	o := Options{Sandbox: "qemu", DataDir: data}

	r := Run(ctx, Checks(o))
	k := find(r, qemu.CheckKernel)
	if k.OK || !strings.Contains(k.Info, filepath.Join(data, "images")) || !strings.Contains(k.Fix, "--data-dir "+data) {
		t.Fatalf("kernel check without an image = %+v; want a failure naming the image dir and a fix with --data-dir", k)
	}
	err := r.Err()
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "guest kernel") || !strings.Contains(err.Error(), "nex rootfs build") {
		t.Fatalf("Err = %v; want ErrFailed naming the kernel and its fix", err)
	}

	kernel, initrd := fakeImage(t, data, "aaaa")
	r = Run(ctx, Checks(o))
	if c := find(r, qemu.CheckKernel); !c.OK || !strings.Contains(c.Info, kernel) || !strings.Contains(c.Info, "through ACPI") {
		t.Fatalf("kernel check with an image = %+v", c)
	}
	if c := find(r, qemu.CheckInitrd); !c.OK || !strings.Contains(c.Info, initrd) {
		t.Fatalf("initramfs check with an image = %+v", c)
	}

	// Configured files win, and a bad one is reported with its own fix.
	o.Kernel, o.Initrd = filepath.Join(data, "missing-vmlinux"), initrd
	r = Run(ctx, Checks(o))
	if c := find(r, qemu.CheckKernel); c.OK || !strings.Contains(c.Fix, "kernel_filepath") {
		t.Fatalf("kernel check of a missing configured file = %+v", c)
	}
}

func TestKernelKind(t *testing.T) {
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	debian := filepath.Join(dir, "debian")
	os.WriteFile(small, []byte("\x7fELF\x00virtio_mmio.device\x00"), 0o644)
	os.WriteFile(debian, []byte("\x7fELF\x00virtio_mmio.c\x00"), 0o644)
	for _, tc := range []struct {
		kernel   string
		a        accel.Kind
		compiled string
		want     string
		not      string
	}{
		{small, accel.TCG, "", "no ACPI", "nex rootfs"},
		{small, accel.TCG, small, "no ACPI", "nex rootfs"},
		{debian, accel.TCG, "", "nex rootfs kernel", "no ACPI"},
		{debian, accel.TCG, small, "one is compiled (" + small + "): nex rootfs build", "nex rootfs kernel"},
		{debian, accel.KVM, "", "through ACPI", "nex rootfs"},
		{debian, accel.KVM, small, "through ACPI", "nex rootfs"},
	} {
		got := kernelKind(tc.kernel, tc.a, tc.compiled)
		if !strings.Contains(got, tc.want) || strings.Contains(got, tc.not) {
			t.Errorf("kernelKind(%s, %s, %q) = %q, want %q and not %q", filepath.Base(tc.kernel), tc.a, tc.compiled, got, tc.want, tc.not)
		}
	}
}

func TestStateDirAndDisk(t *testing.T) {
	ctx := context.Background()
	data := filepath.Join(t.TempDir(), "not", "yet")
	r := Run(ctx, Checks(Options{Sandbox: "process", DataDir: data}))
	if !r.OK() {
		t.Fatalf("process preflight on a fresh data dir: %v", r.Err())
	}
	if st, err := os.Stat(filepath.Join(data, "state")); err != nil || !st.IsDir() {
		t.Fatalf("state dir not created: %v", err)
	}

	r = Run(ctx, Checks(Options{Sandbox: "process", DataDir: t.TempDir(), MinFreeMiB: 1 << 40}))
	if c := find(r, CheckFreeDisk); c.OK || c.Fix == "" {
		t.Fatalf("free disk check asking for 1 EiB = %+v; want a failure with a fix", c)
	}

	// A state dir under a file cannot be made.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	r = Run(ctx, Checks(Options{Sandbox: "process", DataDir: t.TempDir(), StateDir: filepath.Join(file, "state")}))
	if c := find(r, CheckStateDir); c.OK {
		t.Fatalf("state dir under a file = %+v; want a failure", c)
	}
}

func TestRunAndFix(t *testing.T) {
	marker := filepath.Join(t.TempDir(), "fixed")
	var fixes int
	checks := []Check{
		{Name: "fixable", Run: func(context.Context) sandbox.Check {
			if _, err := os.Stat(marker); err != nil {
				return sandbox.Check{Info: "no marker", Fix: "touch it"}
			}
			return sandbox.Check{OK: true, Info: "marker there"}
		}, Fix: func(_ context.Context, w io.Writer) error {
			fixes++
			return os.WriteFile(marker, nil, 0o644)
		}},
		{Name: "manual", Run: func(context.Context) sandbox.Check {
			return sandbox.Check{Info: "needs a person", Fix: "do it by hand"}
		}},
		{Name: "broken fix", Run: func(context.Context) sandbox.Check {
			return sandbox.Check{Info: "still bad", Fix: "x"}
		}, Fix: func(context.Context, io.Writer) error { return errors.New("no network") }},
	}
	before := Run(context.Background(), checks)
	if before.OK() || !before.Fixable(checks) {
		t.Fatalf("before fixing: OK=%v fixable=%v", before.OK(), before.Fixable(checks))
	}
	var out bytes.Buffer
	r := RunAndFix(context.Background(), checks, &out)
	if !r[0].OK || fixes != 1 {
		t.Fatalf("fixable check after its fix = %+v (fix ran %d times)", r[0], fixes)
	}
	if r[1].OK || r[2].OK || !strings.Contains(r[2].Info, "the fix failed: no network") {
		t.Fatalf("manual and broken checks = %+v, %+v", r[1], r[2])
	}
	if !strings.Contains(out.String(), "→ fixing fixable") {
		t.Fatalf("fix progress not written: %q", out.String())
	}

	var printed bytes.Buffer
	r.Print(&printed)
	want := []string{"✔ fixable", "✘ manual", "fix: do it by hand", "✘ broken fix"}
	for _, w := range want {
		if !strings.Contains(printed.String(), w) {
			t.Errorf("report lacks %q:\n%s", w, printed.String())
		}
	}
}

func TestQEMUConfig(t *testing.T) {
	data := t.TempDir()
	kernel, initrd := fakeImage(t, data, "bbbb")
	c := Options{Sandbox: "qemu", DataDir: data, Snapshot: true}.QEMUConfig(nil)
	if c.Kernel != kernel || c.Initrd != initrd || !c.Snapshot || c.SnapshotDir != filepath.Join(data, "snapshots") {
		t.Fatalf("QEMUConfig = %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

// After an upgrade the newest image may hold the previous nex as /init:
// the check warns, with the build as what to do; an image of this nex
// passes; one that predates the record passes with a note.
func TestGuestAgentCheck(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	own, err := guestimage.GoBuildID(self)
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	o := Options{Sandbox: "qemu", DataDir: data, Agent: self}
	if c := o.checkGuestAgent(context.Background()); !c.OK || !strings.Contains(c.Info, "no image") {
		t.Fatalf("no image: %+v", c)
	}
	_, initrd := fakeImage(t, data, "0000000000000000000000000000000000000000000000000000000000000001")
	dir := filepath.Dir(initrd)
	if c := o.checkGuestAgent(context.Background()); !c.OK || !strings.Contains(c.Info, "predates") {
		t.Fatalf("image without a record: %+v", c)
	}
	record := func(id string) {
		if err := os.WriteFile(filepath.Join(dir, guestimage.AgentIDFile), []byte(id+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	record(own)
	if c := o.checkGuestAgent(context.Background()); !c.OK || c.Fix != "" {
		t.Fatalf("image of this nex: %+v", c)
	}
	record("older-action-id/older-content-id")
	c := o.checkGuestAgent(context.Background())
	if !c.OK || !c.Warning || !strings.Contains(c.Info, "another nex build (older-action-id;") || !strings.Contains(c.Fix, "nex rootfs build") {
		t.Fatalf("image of another nex: %+v", c)
	}
	if w := (Report{c}).Warnings(); len(w) != 1 {
		t.Fatalf("warnings of the report: %+v", w)
	}
	var out strings.Builder
	(Report{c}).Print(&out)
	if !strings.HasPrefix(out.String(), "! guest agent") || !strings.Contains(out.String(), "fix: nex rootfs build") {
		t.Fatalf("a warning prints as:\n%s", out.String())
	}
	if (Report{c}).Err() != nil {
		t.Fatal("a warning fails the preflight")
	}
	o.Kernel, o.Initrd = "/boot/vmlinux", "/boot/initrd"
	if c := o.checkGuestAgent(context.Background()); !c.OK {
		t.Fatalf("configured image files: %+v", c)
	}
}

// The image fix (`preflight --yes`) builds on the kernel `nex rootfs
// kernel` compiled, as `nex rootfs build` does, so a rebuild after an
// upgrade keeps it rather than going back to Debian's. A static Go
// program stands in for the agent and, with the drivers' names appended,
// for the kernel.
func TestBuildImageTakesTheCompiledKernel(t *testing.T) {
	bin := sandboxtest.BuildWorkload(t) // any static Go program
	elf, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Sandbox: "qemu", DataDir: t.TempDir(), Agent: bin}
	compiled := filepath.Join(o.ImageDir(), guestimage.KernelsDir, "k1", guestimage.KernelFile)
	os.MkdirAll(filepath.Dir(compiled), 0o755)
	kernel := append(elf, "\x00virtio-mmio\x00virtio_net\x00virtio_console\x00"...)
	if err := os.WriteFile(compiled, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := o.buildImage(context.Background(), &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	k, initrd := o.Image()
	got, err := os.ReadFile(k)
	if err != nil || initrd == "" || !bytes.Equal(got, kernel) {
		t.Fatalf("image %s, %s (%v): not the compiled kernel\n%s", k, initrd, err, out.String())
	}
}

// TestRunAndFixFixesWarnings: --yes applies the fix of a check that passes
// with a warning (an image of an older nex, after an upgrade), as it does a
// failed check's; a check that passes plainly is left alone.
func TestRunAndFixFixesWarnings(t *testing.T) {
	stale := true
	var fixed []string
	fix := func(name string) func(context.Context, io.Writer) error {
		return func(context.Context, io.Writer) error {
			fixed = append(fixed, name)
			stale = false
			return nil
		}
	}
	checks := []Check{
		{Name: "fine", Fix: fix("fine"), Run: func(context.Context) sandbox.Check { return sandbox.Check{OK: true} }},
		{Name: "stale", Fix: fix("stale"), Run: func(context.Context) sandbox.Check {
			return sandbox.Check{OK: true, Warning: stale, Info: fmt.Sprintf("stale=%v", stale)}
		}},
	}
	if r := Run(context.Background(), checks); !r.Fixable(checks) || len(r.Warnings()) != 1 {
		t.Fatalf("before: fixable %v, warnings %+v", r.Fixable(checks), r.Warnings())
	}
	var out strings.Builder
	r := RunAndFix(context.Background(), checks, &out)
	if !slices.Equal(fixed, []string{"stale"}) || len(r.Warnings()) != 0 || !strings.Contains(out.String(), "→ fixing stale") {
		t.Fatalf("fixed %v, warnings after %+v, output %q", fixed, r.Warnings(), out.String())
	}
}
