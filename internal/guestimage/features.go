package guestimage

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"io"
	"os"
	"sync"
)

// cmdlineDevicesParam is the parameter by which a kernel built with
// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES (and virtio_mmio built in) learns its
// virtio-mmio devices from the command line. The kernel's table of built-in
// parameters holds the name as a NUL-terminated string.
var cmdlineDevicesParam = []byte("virtio_mmio.device\x00")

// CmdlineDevices reports whether the kernel at path finds virtio-mmio
// devices on its command line. Such a kernel boots without ACPI: QEMU's
// microvm with acpi=off lists the devices there, and the guest skips the
// ACPI tables and their interpreter (Firecracker always passes devices this
// way). Debian's kernels lack it (virtio_mmio is a module) and need ACPI.
//
// Scanning a 53 MB kernel takes ≈ 25 ms, and a node asks twice as it starts
// (preflight, then the driver), the Firecracker stand-in at every boot: the
// answer is kept per file for as long as its size and mtime stay the same.
func CmdlineDevices(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	key := scannedFile{path, st.Size(), st.ModTime().UnixNano()}
	if found, ok := cmdlineDevicesSeen.Load(key); ok {
		return found.(bool), nil
	}
	found, err := containsStream(bufio.NewReaderSize(f, 1<<20), cmdlineDevicesParam)
	if err != nil {
		return false, fmt.Errorf("kernel %s: %w", path, err)
	}
	cmdlineDevicesSeen.Store(key, found)
	return found, nil
}

// scannedFile is a file as it was when CmdlineDevices read it.
type scannedFile struct {
	path  string
	size  int64
	mtime int64
}

var cmdlineDevicesSeen sync.Map // scannedFile → bool

// containsStream reports whether r holds needle, reading it in chunks that
// overlap by len(needle)-1 bytes so a match across two reads is found.
func containsStream(r io.Reader, needle []byte) (bool, error) {
	buf := make([]byte, 0, 1<<20+len(needle))
	chunk := make([]byte, 1<<20)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if bytes.Contains(buf, needle) {
			return true, nil
		}
		if keep := len(needle) - 1; len(buf) > keep {
			buf = append(buf[:0], buf[len(buf)-keep:]...)
		}
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// missingBuiltins lists the guest's drivers (guestModules) that the kernel
// image vmlinux does not have built in, the ones a guest cannot do without
// apart from the optional ones. A driver built into a kernel names itself
// there as a NUL-terminated string (moduleWant.builtin, or the module's
// name); a kernel that has it as a module does not hold that string.
func missingBuiltins(vmlinux []byte) (required, optional []string) {
	for _, m := range guestModules {
		name := cmp.Or(m.builtin, m.name)
		if bytes.Contains(vmlinux, []byte("\x00"+name+"\x00")) {
			continue
		}
		if m.optional {
			optional = append(optional, m.name+" ("+m.without+")")
		} else {
			required = append(required, m.name)
		}
	}
	return required, optional
}
