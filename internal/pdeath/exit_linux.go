package pdeath

import (
	"os"

	"golang.org/x/sys/unix"
)

// awaitExit returns once process pid has exited, parked in the runtime's
// poller on a pidfd instead of in the wait system call. A goroutine in a
// blocking system call keeps its P until the runtime's monitor takes it
// back, and the monitor's short sleeps last a whole timer tick on a kernel
// without high-resolution timers (nex's guest kernel under TCG: 4–7 ms
// measured). With one P, as the agent has in a VM of one vCPU, every other
// goroutine of the agent and of PID 1 (the deploy's answer among them)
// waited that long after each workload's start. With more Ps another one
// runs them at once, so Start calls this only with one. When no pidfd can
// be had it returns at once, and the caller's wait blocks as before.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	polled := false
	_ = rc.Read(func(uintptr) bool {
		done := polled // readable: the process has exited
		polled = true
		return done
	})
}
