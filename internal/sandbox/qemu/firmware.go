package qemu

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Firmware is the boot firmware of nex's VMs: qboot, the minimal firmware
// made for microvm, which jumps straight to the kernel's PVH entry point.
// Debian's QEMU 7.2 makes it microvm's default (its bios-microvm.bin is a
// link to qboot.rom). Debian's QEMU 10.0 (Debian 13, bookworm-backports)
// makes SeaBIOS's microvm build the default instead, under which guests with
// Debian's kernel reset before their console came up in 11 of 22 cold boots
// here (docs/BENCHMARKS.md). So the driver names qboot itself; both ship it.
const Firmware = "qboot.rom"

// FindFirmware returns the path of the file name in the first of bin's
// firmware directories (`-L help`) that has it, or "" when none does. The
// answer is kept for the life of the process, so the preflight, the driver
// and the Firecracker stand-in's boots ask QEMU once; a QEMU that could not
// be run is asked again next time.
func FindFirmware(ctx context.Context, bin, name string) string {
	key := bin + "\x00" + name
	if p, ok := firmwareFound.Load(key); ok {
		return p.(string)
	}
	out, err := exec.CommandContext(ctx, bin, "-L", "help").Output()
	if err != nil {
		return ""
	}
	found := ""
	for _, dir := range strings.Split(string(out), "\n") {
		if dir = strings.TrimSpace(dir); dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			found = p
			break
		}
	}
	firmwareFound.Store(key, found)
	return found
}

// firmwareFound holds FindFirmware's answers by binary and file name.
var firmwareFound sync.Map
