package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestRootfsBuild drives `nex rootfs build` with a supplied kernel. A static
// Go program stands in for both the kernel (an ELF vmlinux goes in as it is)
// and the agent; no modules directory means a kernel with its drivers built
// in, so the stand-in kernel carries their names as a kernel holds them.
func TestRootfsBuild(t *testing.T) {
	dir := t.TempDir()
	bin := sandboxtest.BuildWorkload(t) // any static Go program
	data := filepath.Join(dir, "data")

	// Without the drivers the kernel is refused, naming them and the fix.
	args := []string{"rootfs", "build", "--kernel", bin, "--agent", bin, "--data-dir", data}
	var out, errb bytes.Buffer
	if code := Main(context.Background(), args, &out, &errb); code == 0 ||
		!strings.Contains(errb.String(), "virtio_net") || !strings.Contains(errb.String(), "nex rootfs kernel") {
		t.Fatalf("kernel without drivers: exit %d, stderr %s", code, errb.String())
	}

	elf, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, append(elf, "\x00virtio-mmio\x00virtio_net\x00virtio_console\x00"...), 0o644); err != nil {
		t.Fatal(err)
	}
	args[3] = kernel
	out.Reset()
	errb.Reset()
	if code := Main(context.Background(), args, &out, &errb); code != 0 {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out.String(), errb.String())
	}
	fields := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		k, v, _ := strings.Cut(l, ":")
		fields[k] = strings.TrimSpace(v)
	}
	images := filepath.Join(data, "images") + string(filepath.Separator)
	for _, k := range []string{"kernel", "initrd"} {
		if !strings.HasPrefix(fields[k], images) {
			t.Fatalf("%s = %q, want a file under %s", k, fields[k], images)
		}
		if _, err := os.Stat(fields[k]); err != nil {
			t.Fatal(err)
		}
	}
	if len(fields["hash"]) != 64 || !strings.Contains(fields["kernel"], fields["hash"]) {
		t.Fatalf("hash %q does not name the image directory (%s)", fields["hash"], fields["kernel"])
	}
	if !strings.Contains(errb.String(), "initramfs") {
		t.Fatalf("no progress on stderr: %s", errb.String())
	}

	// Once nex rootfs kernel has compiled a kernel, a build without
	// --kernel takes it: the same image as with --kernel naming it.
	compiled := filepath.Join(data, "images", guestimage.KernelsDir, "k1", guestimage.KernelFile)
	if err := os.MkdirAll(filepath.Dir(compiled), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(compiled, append(elf, "\x00virtio-mmio\x00virtio_net\x00virtio_console\x00"...), 0o644); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errb.Reset()
	noKernel := []string{"rootfs", "build", "--agent", bin, "--data-dir", data}
	if code := Main(context.Background(), noKernel, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), fields["hash"]) || !strings.Contains(errb.String(), compiled) {
		t.Fatalf("build with a compiled kernel: exit %d, want hash %s\nstdout %s\nstderr %s", code, fields["hash"], out.String(), errb.String())
	}
	// --debian-kernel and --kernel say different things.
	out.Reset()
	errb.Reset()
	if code := Main(context.Background(), append(args, "--debian-kernel"), &out, &errb); code == 0 ||
		!strings.Contains(errb.String(), "--debian-kernel") {
		t.Fatalf("--kernel with --debian-kernel: exit %d, stderr %s", code, errb.String())
	}

	// A missing kernel is refused with its name.
	out.Reset()
	errb.Reset()
	args[3] = filepath.Join(dir, "nope")
	if code := Main(context.Background(), args, &out, &errb); code == 0 || !strings.Contains(errb.String(), "nope") {
		t.Fatalf("missing kernel: exit %d, stderr %s", code, errb.String())
	}
}
