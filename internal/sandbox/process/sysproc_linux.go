package process

import "syscall"

// sysProcAttr gives the agent its own process group, and has the kernel
// kill it when the node dies, so a killed node leaves no agents behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
