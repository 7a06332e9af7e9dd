package native

import "syscall"

// sysProcAttr puts the workload in its own process group and has the kernel
// kill it if the agent dies first.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
