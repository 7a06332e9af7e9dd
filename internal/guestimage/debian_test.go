package guestimage

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

// TestBuildDebianKernel fetches Debian's cloud kernel with apt and builds the
// real image twice: the second build, in another cache, must give the same
// bytes.
func TestBuildDebianKernel(t *testing.T) {
	if os.Getenv("NEX_VM_TESTS") != "1" {
		t.Skip("downloads Debian's cloud kernel with apt-get: set NEX_VM_TESTS=1 to run")
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		t.Skip("apt-get not found: the default kernel comes from Debian's archive")
	}
	agent := filepath.Join(t.TempDir(), "hello")
	src := filepath.Join(t.TempDir(), "main.go")
	os.WriteFile(src, []byte("package main\nfunc main() {}\n"), 0o644)
	build := exec.Command("go", "build", "-o", agent, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = t.TempDir()
	}
	opts := Options{
		CacheDir:   t.TempDir(),
		PackageDir: filepath.Join(cache, "nex-vmtest", "pkgs"),
		Agent:      agent,
		Progress:   func(s string) { t.Log(s) },
	}
	img, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kernel %s, image %s", img.KernelVersion, img.Hash)
	for _, m := range []string{"virtio_mmio", "virtio_net", "virtio_console"} {
		if !slices.ContainsFunc(img.Modules, func(f string) bool { n, _ := moduleName(f); return n == m }) {
			t.Errorf("image lacks %s: %v", m, img.Modules)
		}
	}
	// Debian's kernel does not force module signatures, so the image
	// carries its modules unsigned (init loads them faster).
	ar := readArchive(t, img.Initrd)
	for _, m := range img.Modules {
		if bytes.HasSuffix(ar[ModulesDir+"/"+m].Data, []byte(moduleSigMagic)) {
			t.Errorf("module %s still carries its signature", m)
		}
	}
	if id, err := GoBuildID(agent); err != nil || ImageAgentID(filepath.Dir(img.Kernel)) != id {
		t.Errorf("image records agent build %q, the agent is %q (%v)", ImageAgentID(filepath.Dir(img.Kernel)), id, err)
	}
	if !hasPVHNote(t, img.Kernel) {
		t.Fatal("vmlinux has no PVH entry note: QEMU and Firecracker cannot boot it directly")
	}

	opts.CacheDir = t.TempDir()
	again, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if again.Hash != img.Hash {
		t.Fatalf("same inputs, hashes %s and %s", img.Hash, again.Hash)
	}
	for _, p := range [][2]string{{img.Kernel, again.Kernel}, {img.Initrd, again.Initrd}} {
		a, _ := os.ReadFile(p[0])
		b, _ := os.ReadFile(p[1])
		if !bytes.Equal(a, b) {
			t.Fatalf("%s differs between builds", filepath.Base(p[0]))
		}
	}
}

// hasPVHNote looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18), the
// 32-bit entry point PVH boots through.
func hasPVHNote(t *testing.T, path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		b := make([]byte, p.Filesz)
		if _, err := p.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}
		for len(b) >= 12 {
			nsz, dsz, typ := binary.LittleEndian.Uint32(b), binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:])
			name := b[12:min(len(b), 12+int(nsz))]
			if typ == 18 && bytes.HasPrefix(name, []byte("Xen")) {
				return true
			}
			next := 12 + int((nsz+3)&^3) + int((dsz+3)&^3)
			if next > len(b) {
				break
			}
			b = b[next:]
		}
	}
	return false
}
