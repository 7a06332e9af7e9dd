package guestimage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// kernelEdit is a change BuildKernel makes to the kernel source before it
// configures it: old must occur exactly once in file, and becomes new.
type kernelEdit struct {
	file, old, new string
}

// kernelEdits are nex's changes to the kernel source, each one for the
// guest's boot under emulation (docs/BENCHMARKS.md). They are part of the
// kernel's cache key.
var kernelEdits = []kernelEdit{
	// Freeing the kernel's init sections and the initramfs fills every
	// freed page with a poison byte first, a debugging aid. Under TCG the
	// init text is code the guest has just run, and a store into a page
	// that holds translated code goes through QEMU's self-modifying-code
	// checks: the console showed 0.29–0.34 s from the last initcall to
	// "Freeing unused kernel image (initmem) memory: 672K", 7–23 ms
	// without the poison. The freed pages go back to the page allocator
	// as they are (it zeroes what it hands out to user space).
	{file: "arch/x86/mm/init.c", old: "POISON_FREE_INITMEM, what);", new: "-1, what);"},
	// virtio-serial's driver fills every receive queue (each port's and
	// the control queue) with a 4 KiB buffer per entry, and QEMU's
	// virtio-mmio offers every queue 1024 entries: 16 MiB of a guest's
	// memory for nex's 3 ports, held for the VM's life, and written in
	// turn as data arrives (so, in a snapshot clone, copied). 128 per
	// queue, the depth QEMU's virtio-serial has over PCI, holds 2 MiB.
	{file: "drivers/char/virtio_console.c",
		old: "\t} while (ret > 0);\n\n\treturn nr_added_bufs;",
		new: "\t} while (ret > 0 && nr_added_bufs < 128);\n\n\treturn nr_added_bufs;"},
}

// applyKernelEdits makes edits in the kernel tree at dir. A source that
// does not read as an edit expects (another kernel version) fails by
// name, rather than building a kernel without the edit.
func applyKernelEdits(dir string, edits []kernelEdit) error {
	for _, e := range edits {
		p := filepath.Join(dir, e.file)
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("nex's kernel edit of %s: %w", e.file, err)
		}
		if n := strings.Count(string(b), e.old); n != 1 {
			return fmt.Errorf("nex's kernel edit of %s: %q occurs %d times in this source, want once", e.file, e.old, n)
		}
		if err := os.WriteFile(p, []byte(strings.Replace(string(b), e.old, e.new, 1)), 0o644); err != nil {
			return fmt.Errorf("nex's kernel edit of %s: %w", e.file, err)
		}
	}
	return nil
}

// hashKernelEdits writes edits to a cache key's hash.
func hashKernelEdits(w io.Writer, edits []kernelEdit) {
	for _, e := range edits {
		fmt.Fprintf(w, "%s\x00%s\x00%s\x00", e.file, e.old, e.new)
	}
}
