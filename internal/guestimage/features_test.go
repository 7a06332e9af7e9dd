package guestimage

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"
)

func TestContainsStreamAcrossReads(t *testing.T) {
	needle := []byte("virtio_mmio.device\x00")
	for _, at := range []int{0, 1, 7, 4095, 1<<20 - 5, 1 << 20, 3<<20 - len(needle)} {
		b := bytes.Repeat([]byte{'x'}, 3<<20)
		copy(b[at:], needle)
		// HalfReader returns short reads, so the needle straddles reads at
		// offsets a whole-buffer reader never splits it at.
		for name, r := range map[string]io.Reader{"whole": bytes.NewReader(b), "half": iotest.HalfReader(bytes.NewReader(b))} {
			if got, err := containsStream(r, needle); err != nil || !got {
				t.Fatalf("%s reads: needle at %d: found=%v err=%v", name, at, got, err)
			}
		}
	}
	got, err := containsStream(strings.NewReader(strings.Repeat("virtio_mmio.device", 1000)), needle)
	if err != nil || got {
		t.Fatalf("a name without its NUL counted: found=%v err=%v", got, err)
	}
}

func TestCmdlineDevices(t *testing.T) {
	dir := t.TempDir()
	with := filepath.Join(dir, "with")
	without := filepath.Join(dir, "without")
	if err := os.WriteFile(with, []byte("\x7fELF...virtio_mmio.device\x00..."), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(without, []byte("\x7fELF...virtio_mmio.c\x00..."), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := CmdlineDevices(with); err != nil || !ok {
		t.Fatalf("with: %v %v", ok, err)
	}
	if ok, err := CmdlineDevices(without); err != nil || ok {
		t.Fatalf("without: %v %v", ok, err)
	}
	if _, err := CmdlineDevices(filepath.Join(dir, "missing")); err == nil {
		t.Fatal("a missing kernel gave no error")
	}
}

// A kernel replaced in place is scanned again: the kept answer belongs to
// the file as it was.
func TestCmdlineDevicesFollowsTheFile(t *testing.T) {
	k := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(k, []byte("\x7fELF...virtio_mmio.c\x00"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if ok, err := CmdlineDevices(k); err != nil || ok {
			t.Fatalf("before: %v %v", ok, err)
		}
	}
	if err := os.WriteFile(k, []byte("\x7fELF...virtio_mmio.device\x00..."), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, err := CmdlineDevices(k); err != nil || !ok {
		t.Fatalf("after the kernel changed: %v %v", ok, err)
	}
}
