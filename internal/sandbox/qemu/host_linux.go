package qemu

import (
	"os"
	"sync"
)

// hostTSCkHz is computed once per process: the value does not change.
var hostTSCkHz = sync.OnceValue(func() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	return tscKHzFrom(f)
})

// HostTSCkHz is the host's TSC frequency in kHz (0 when unknown), what a
// microvm guest under TCG must be told with tsc_early_khz.
func HostTSCkHz() int { return hostTSCkHz() }
