//go:build unix && !linux

package native

import "syscall"

// sysProcAttr puts the workload in its own process group; other systems have
// no parent-death signal.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
