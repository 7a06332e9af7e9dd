package qemu

import (
	"os"
	"sync"
	"syscall"
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

// procAttr puts QEMU in its own process group (so Stop and Reap can kill the
// group) and has the kernel kill it if the node dies without stopping it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
