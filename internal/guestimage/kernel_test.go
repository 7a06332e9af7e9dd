package guestimage

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestKernelConfigBuildsInWhatTheGuestUses(t *testing.T) {
	c := parseKernelConfig(KernelConfig)
	// What vminit and the drivers rely on: PVH boot, devices from the
	// command line (acpi=off), the virtio transports and an initramfs.
	for _, sym := range []string{"CONFIG_PVH", "CONFIG_VIRTIO_MMIO", "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
		"CONFIG_VIRTIO_CONSOLE", "CONFIG_VIRTIO_NET", "CONFIG_VIRTIO_VSOCKETS", "CONFIG_BLK_DEV_INITRD",
		"CONFIG_DEVTMPFS", "CONFIG_TMPFS", "CONFIG_INET", "CONFIG_UNIX", "CONFIG_SERIAL_8250_CONSOLE"} {
		if c[sym] != "y" {
			t.Errorf("%s = %q, want y", sym, c[sym])
		}
	}
	if v, ok := c["CONFIG_MODULES"]; ok && v != "" {
		t.Errorf("CONFIG_MODULES = %q: the guest image carries no modules for this kernel", v)
	}
}

func TestCheckKernelConfig(t *testing.T) {
	want := "# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=64\n"
	for _, tc := range []struct {
		name, got string
		errs      []string
	}{
		{"all as wanted", "CONFIG_A=y\nCONFIG_N=64\nCONFIG_C=y\n", nil},
		{"wanted y dropped by a dependency", "# CONFIG_A is not set\nCONFIG_N=64\n", []string{"CONFIG_A is not set, want y"}},
		{"unset option forced on", "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=64\n", []string{"CONFIG_B is y, want not set"}},
		{"value changed, option missing", "CONFIG_N=8\n", []string{"CONFIG_A is not set, want y", "CONFIG_N is 8, want 64"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkKernelConfig(want, tc.got)
			if len(tc.errs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, e := range tc.errs {
				if !strings.Contains(err.Error(), e) {
					t.Errorf("error %q lacks %q", err, e)
				}
			}
		})
	}
}

func TestParseKernelConfigLaterLineWins(t *testing.T) {
	c := parseKernelConfig("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_A is not set\nCONFIG_B=m\n")
	if c["CONFIG_A"] != "" || c["CONFIG_B"] != "m" {
		t.Fatalf("got %v", c)
	}
}

func TestCompareVersionedNames(t *testing.T) {
	names := []string{"linux-source-6.12.tar.xz", "linux-source-6.1.tar.xz", "linux-source-5.10.tar.xz", "linux-source-6.2.tar.xz"}
	slices.SortFunc(names, compareVersionedNames)
	want := []string{"linux-source-5.10.tar.xz", "linux-source-6.1.tar.xz", "linux-source-6.2.tar.xz", "linux-source-6.12.tar.xz"}
	if !slices.Equal(names, want) {
		t.Fatalf("got %v, want %v", names, want)
	}
}

func TestKernelKeyFollowsTheSourceBytes(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	os.WriteFile(a, []byte("source one"), 0o644)
	os.WriteFile(b, []byte("source two"), 0o644)
	ka, err := kernelKey(a)
	if err != nil {
		t.Fatal(err)
	}
	ka2, _ := kernelKey(a)
	kb, _ := kernelKey(b)
	if ka != ka2 || ka == kb {
		t.Fatalf("keys: a=%s a again=%s b=%s", ka, ka2, kb)
	}
	if _, err := kernelKey(filepath.Join(dir, "missing.tar")); err == nil {
		t.Fatal("a missing source gave a key")
	}
}

// A kernel built before from the same source is returned without building
// (no toolchain needed, nothing unpacked).
func TestBuildKernelCached(t *testing.T) {
	cache := t.TempDir()
	src := filepath.Join(t.TempDir(), "linux.tar")
	os.WriteFile(src, []byte("not really a tarball"), 0o644)
	key, err := kernelKey(src)
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(cache, KernelsDir, key, KernelFile)
	os.MkdirAll(filepath.Dir(want), 0o755)
	os.WriteFile(want, []byte("\x7fELF"), 0o644)
	var lines []string
	got, err := BuildKernel(context.Background(), KernelOptions{CacheDir: cache, Source: src, Progress: func(s string) { lines = append(lines, s) }})
	if err != nil || got != want {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "cached") {
		t.Fatalf("progress %q", lines)
	}

	// Asked for again while another kernel was compiled since, it becomes
	// the newest again: the one images built after take.
	other := filepath.Join(cache, KernelsDir, "other", KernelFile)
	os.MkdirAll(filepath.Dir(other), 0o755)
	os.WriteFile(other, []byte("\x7fELF"), 0o644)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(want, old, old)
	if CompiledKernel(cache) != other {
		t.Fatalf("CompiledKernel = %q before, want %q", CompiledKernel(cache), other)
	}
	if _, err := BuildKernel(context.Background(), KernelOptions{CacheDir: cache, Source: src}); err != nil {
		t.Fatal(err)
	}
	if got := CompiledKernel(cache); got != want {
		t.Fatalf("CompiledKernel = %q after, want %q", got, want)
	}
}

// CompiledKernel is the newest complete kernel; a build under way (its
// tree holds a vmlinux while it links) and a failed one (a log, no
// vmlinux) are not kernels.
func TestCompiledKernel(t *testing.T) {
	cache := t.TempDir()
	if got := CompiledKernel(cache); got != "" {
		t.Fatalf("empty cache: %q", got)
	}
	now := time.Now()
	put := func(dir, name string, age time.Duration) string {
		p := filepath.Join(cache, KernelsDir, dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("\x7fELF"), 0o644)
		os.Chtimes(p, now.Add(-age), now.Add(-age))
		return p
	}
	put("a", KernelFile, 2*time.Hour)
	want := put("b", KernelFile, time.Hour)
	put(".build-123", KernelFile, 0)
	put("c", "build.log", 0)
	os.MkdirAll(filepath.Join(cache, KernelsDir, "d", KernelFile), 0o755) // not a file
	if got := CompiledKernel(cache); got != want {
		t.Fatalf("CompiledKernel = %q, want %q", got, want)
	}
}

func TestBuildKernelBadSource(t *testing.T) {
	cache := t.TempDir()
	_, err := BuildKernel(context.Background(), KernelOptions{CacheDir: cache, Source: filepath.Join(cache, "nope.tar.xz")})
	if err == nil || !strings.Contains(err.Error(), "nope.tar.xz") {
		t.Fatalf("err = %v", err)
	}
	src := filepath.Join(cache, "garbage.tar.xz")
	os.WriteFile(src, []byte("garbage"), 0o644)
	_, err = BuildKernel(context.Background(), KernelOptions{CacheDir: cache, Source: src})
	// Without a toolchain the build stops before unpacking, naming the fix.
	want := "unpack"
	if len(MissingKernelTools()) > 0 {
		want = "fix: apt-get install -y linux-source"
	}
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want it to mention %q", err, want)
	}
	// Nothing half-built is left to be mistaken for a kernel.
	left, _ := filepath.Glob(filepath.Join(cache, KernelsDir, "*", KernelFile))
	builds, _ := filepath.Glob(filepath.Join(cache, KernelsDir, ".build-*"))
	if len(left)+len(builds) > 0 {
		t.Fatalf("left behind: %v %v", left, builds)
	}
}

func TestApplyKernelEdits(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "mm"), 0o755)
	write := func(s string) { os.WriteFile(filepath.Join(dir, "mm", "init.c"), []byte(s), 0o644) }
	edits := []kernelEdit{{file: "mm/init.c", old: "poison(POISON);", new: "poison(-1);"}}

	write("a();\npoison(POISON);\nb();\n")
	if err := applyKernelEdits(dir, edits); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "mm", "init.c")); string(b) != "a();\npoison(-1);\nb();\n" {
		t.Fatalf("edited: %q", b)
	}
	// A source the edit does not fit is refused by name, not built as is.
	for _, src := range []string{"a();\n", "poison(POISON);\npoison(POISON);\n"} {
		write(src)
		err := applyKernelEdits(dir, edits)
		if err == nil || !strings.Contains(err.Error(), "mm/init.c") || !strings.Contains(err.Error(), "want once") {
			t.Fatalf("source %q: err = %v", src, err)
		}
	}
	if err := applyKernelEdits(t.TempDir(), edits); err == nil || !strings.Contains(err.Error(), "mm/init.c") {
		t.Fatalf("missing file: err = %v", err)
	}
}

// Every edit nex makes is part of the key: changing one builds anew.
func TestKernelKeyFollowsTheEdits(t *testing.T) {
	src := filepath.Join(t.TempDir(), "linux.tar")
	os.WriteFile(src, []byte("source"), 0o644)
	before, _ := kernelKey(src)
	saved := kernelEdits
	t.Cleanup(func() { kernelEdits = saved })
	kernelEdits = slices.Clone(saved)
	kernelEdits[0].new += " "
	if after, _ := kernelKey(src); after == before {
		t.Fatal("a changed edit gives the same key")
	}
}
