package guestimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/guestimage/cpio"
)

type testInputs struct {
	opts   Options
	agent  []byte
	vmlinx []byte
}

func inputs(t *testing.T) testInputs {
	t.Helper()
	dir := t.TempDir()
	vmlinux := fakeELF(300000)
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, fakeBzImage(payload(t, "lz4", vmlinux), true), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := fakeELF(50000)
	agentPath := filepath.Join(dir, "nex")
	if err := os.WriteFile(agentPath, agent, 0o755); err != nil {
		t.Fatal(err)
	}
	return testInputs{
		opts:   Options{Kernel: kernel, KernelModules: fakeModuleTree(t, false), Agent: agentPath},
		agent:  agent,
		vmlinx: vmlinux,
	}
}

func readArchive(t *testing.T, path string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]cpio.Record{}
	r := cpio.NewReader(f)
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[rec.Name] = rec
	}
}

func TestBuildFromSuppliedKernel(t *testing.T) {
	in := inputs(t)
	var steps []string
	in.opts.CacheDir = t.TempDir()
	in.opts.Progress = func(s string) { steps = append(steps, s) }
	img, err := Build(context.Background(), in.opts)
	if err != nil {
		t.Fatal(err)
	}
	if img.Cached || len(steps) == 0 {
		t.Fatalf("first build: cached=%v, progress %q", img.Cached, steps)
	}
	if b, _ := os.ReadFile(img.Kernel); !bytes.Equal(b, in.vmlinx) {
		t.Fatal("image kernel is not the extracted vmlinux")
	}
	ar := readArchive(t, img.Initrd)
	if !bytes.Equal(ar["init"].Data, in.agent) || ar["init"].Mode != cpio.TypeRegular|0o755 {
		t.Fatalf("/init is not the agent, executable (mode %o)", ar["init"].Mode)
	}
	if runtime.GOARCH == "amd64" && (!bytes.Equal(ar[RehearsalFile].Data, rehearsalELF()) || ar[RehearsalFile].Mode != cpio.TypeRegular|0o755) {
		t.Fatalf("/%s is not the rehearsal's program, executable (mode %o)", RehearsalFile, ar[RehearsalFile].Mode)
	}
	if c := ar["dev/console"]; c.Mode&cpio.TypeMask != cpio.TypeChar || c.RMajor != 5 || c.RMinor != 1 {
		t.Fatalf("/dev/console = %+v", c)
	}
	for _, d := range []string{"proc", "sys", "tmp", "run", "dev"} {
		if ar[d].Mode&cpio.TypeMask != cpio.TypeDir {
			t.Fatalf("/%s missing or not a directory", d)
		}
	}
	lines, err := ParseModuleOrder(ar[ModuleOrder].Data)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, l := range lines {
		order = append(order, l.File)
	}
	if lines[0].Device != 0 || lines[len(lines)-1] != (ModuleLine{File: "virtio_console.ko", Device: VirtioConsole}) {
		t.Fatalf("module order lines %+v", lines)
	}
	if !reflect.DeepEqual(order, img.Modules) || len(order) != 7 {
		t.Fatalf("modules/order %v, image says %v", order, img.Modules)
	}
	for _, m := range order {
		if len(ar[ModulesDir+"/"+m].Data) == 0 {
			t.Fatalf("module %s listed but not in the archive", m)
		}
	}

	again, err := Build(context.Background(), in.opts)
	if err != nil || !again.Cached || again.Hash != img.Hash {
		t.Fatalf("second build: %+v, %v; want the cached image %s", again, err, img.Hash)
	}

	// Another cache, same inputs: same hash, same bytes.
	in.opts.CacheDir = t.TempDir()
	other, err := Build(context.Background(), in.opts)
	if err != nil || other.Cached || other.Hash != img.Hash {
		t.Fatalf("rebuild elsewhere: %+v, %v", other, err)
	}
	for _, p := range [][2]string{{img.Kernel, other.Kernel}, {img.Initrd, other.Initrd}} {
		a, _ := os.ReadFile(p[0])
		b, _ := os.ReadFile(p[1])
		if !bytes.Equal(a, b) {
			t.Fatalf("%s and %s differ: the build is not reproducible", p[0], p[1])
		}
	}

	// A different agent is a different image.
	os.WriteFile(in.opts.Agent, fakeELF(50001), 0o755)
	changed, err := Build(context.Background(), in.opts)
	if err != nil || changed.Hash == img.Hash {
		t.Fatalf("changed agent: hash %s (was %s), %v", changed.Hash, img.Hash, err)
	}
}

func TestBuildRefuses(t *testing.T) {
	in := inputs(t)
	in.opts.CacheDir = t.TempDir()

	dyn := fakeELF(1000)
	binary.LittleEndian.PutUint32(dyn[64:], 3) // PT_INTERP
	os.WriteFile(in.opts.Agent, dyn, 0o755)
	if _, err := Build(context.Background(), in.opts); err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Fatalf("dynamic agent: err = %v", err)
	}

	in = inputs(t)
	in.opts.CacheDir = t.TempDir()
	in.opts.Kernel = filepath.Join(t.TempDir(), "nope")
	if _, err := Build(context.Background(), in.opts); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("missing kernel: err = %v", err)
	}

	in = inputs(t)
	in.opts.CacheDir = t.TempDir()
	os.Remove(filepath.Join(in.opts.KernelModules, "kernel/drivers/char/virtio_console.ko"))
	if _, err := Build(context.Background(), in.opts); err == nil || !strings.Contains(err.Error(), "virtio_console") {
		t.Fatalf("kernel without virtio_console: err = %v", err)
	}
}

func TestStripForGuest(t *testing.T) {
	// A real static Go binary: strip it, run it.
	exe := filepath.Join(t.TempDir(), "hello")
	src := filepath.Join(t.TempDir(), "main.go")
	os.WriteFile(src, []byte("package main\nimport \"fmt\"\nfunc main() { fmt.Println(\"hello from stripped\") }\n"), 0o644)
	build := exec.Command("go", "build", "-o", exe, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(exe)
	s, err := stripForGuest(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) >= len(b) || !isCompleteELF(s) {
		t.Fatalf("stripped %d → %d bytes, complete ELF %v", len(b), len(s), isCompleteELF(s))
	}
	os.WriteFile(exe, s, 0o755)
	out, err := exec.Command(exe).CombinedOutput()
	if err != nil || string(out) != "hello from stripped\n" {
		t.Fatalf("stripped binary ran: %q, %v", out, err)
	}
}

func TestParseModuleOrderRejects(t *testing.T) {
	for _, bad := range []string{"a.ko virtio=x\n", "a.ko net=1\n", "../a.ko\n", "a.ko virtio=0\n"} {
		if _, err := ParseModuleOrder([]byte(bad)); err == nil {
			t.Errorf("%q was accepted", bad)
		}
	}
}

func TestPruneImagesKeepsTheNewest(t *testing.T) {
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	var names []string
	for i := range 6 {
		name := fmt.Sprintf("%064x", i+1)
		names = append(names, name)
		img := filepath.Join(dir, name)
		if err := os.MkdirAll(img, 0o755); err != nil {
			t.Fatal(err)
		}
		k := filepath.Join(img, KernelFile)
		if err := os.WriteFile(k, []byte("k"), 0o644); err != nil {
			t.Fatal(err)
		}
		mod := base.Add(time.Duration(i) * time.Minute) // names[5] is the newest
		if err := os.Chtimes(k, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	others := []string{"pkgs", fmt.Sprintf("%064x", 99) + ".tmp-1"}
	for _, o := range others {
		if err := os.MkdirAll(filepath.Join(dir, o), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pruneImages(dir, 4, slog.New(slog.DiscardHandler))
	for i, name := range names {
		_, err := os.Stat(filepath.Join(dir, name))
		if keep := i >= 2; keep != (err == nil) {
			t.Errorf("image %d (of 6, oldest first): kept=%v, want %v", i, err == nil, keep)
		}
	}
	for _, o := range others {
		if _, err := os.Stat(filepath.Join(dir, o)); err != nil {
			t.Errorf("%s was removed", o)
		}
	}
}

// GoBuildID reads what `go tool buildid` prints, and Build records it for
// the image's /init.
func TestGoBuildID(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	got, err := GoBuildID(exe)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "tool", "buildid", exe).Output()
	if err != nil {
		t.Skipf("go tool buildid: %v", err)
	}
	if want := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("GoBuildID = %q, go tool buildid says %q", got, want)
	}
	dir := t.TempDir()
	if ImageAgentID(dir) != "" {
		t.Fatal("an image without a record has an agent id")
	}
	recordAgentID(dir, got)
	if ImageAgentID(dir) != got {
		t.Fatalf("recorded %q, want %q", ImageAgentID(dir), got)
	}
	if _, err := GoBuildID(filepath.Join(dir, AgentIDFile)); err == nil {
		t.Fatal("a text file has a build ID")
	}
}

// A kernel given without modules must have the guest's drivers built in;
// one that lacks them is refused by name at build time instead of booting
// guests that wait for devices until the node's boot timeout.
func TestBuildKernelWithoutModules(t *testing.T) {
	in := inputs(t)
	in.opts.CacheDir = t.TempDir()
	in.opts.KernelModules = ""
	_, err := Build(context.Background(), in.opts)
	for _, want := range []string{"virtio_mmio", "virtio_net", "virtio_console", "nex rootfs kernel"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("err = %v, want it to name %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "vsock") {
		t.Fatalf("err = %v: vsock is optional (QEMU guests do without)", err)
	}

	// The same kernel with the drivers built in (their names as the kernel
	// holds them) builds, and says what Firecracker would miss.
	vmlinux := fakeELF(300000)
	copy(vmlinux[1000:], "\x00virtio-mmio\x00virtio_net\x00virtio_console\x00")
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(kernel, vmlinux, 0o644); err != nil {
		t.Fatal(err)
	}
	in.opts.Kernel = kernel
	var steps []string
	in.opts.Progress = func(s string) { steps = append(steps, s) }
	img, err := Build(context.Background(), in.opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Modules) != 0 {
		t.Fatalf("modules %v, want none", img.Modules)
	}
	for _, missing := range []string{"vmw_vsock_virtio_transport (Firecracker", "virtio_blk (QEMU sandboxes get files"} {
		if !slices.ContainsFunc(steps, func(s string) bool { return strings.Contains(s, missing) }) {
			t.Fatalf("no word on the missing %s in %q", missing, steps)
		}
	}
	// With virtio_blk built in, only vsock is missing.
	copy(vmlinux[2000:], "\x00virtio_blk\x00")
	if err := os.WriteFile(kernel, vmlinux, 0o644); err != nil {
		t.Fatal(err)
	}
	steps = nil
	if _, err := Build(context.Background(), in.opts); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(steps, func(s string) bool { return strings.Contains(s, "virtio_blk") }) {
		t.Fatalf("virtio_blk is built in, yet reported missing: %q", steps)
	}
}
