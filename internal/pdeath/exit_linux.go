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
	awaitReadable(f)
}

// awaitReadable returns once the pidfd f is readable (its process has
// exited), or at once if f cannot be polled.
//
// Each turn asks the pidfd itself, with poll(2) and no timeout, before
// parking: the runtime's poller is edge-triggered, and the read forgets a
// readiness it heard of before the read began, so an exit that came
// before (the poller told once, while the goroutine ran) would otherwise
// be waited for forever. An exit after the ask is an edge the park sees.
func awaitReadable(f *os.File) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(p, 0)
			if err == unix.EINTR {
				continue
			}
			// An error ends the wait here; the caller's wait blocks.
			return err != nil || n > 0
		}
	})
}
