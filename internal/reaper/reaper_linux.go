package reaper

import (
	"errors"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reap reaps every ended child that Start did not record, calling reaped
// for each, and returns once none is left. It returns blocked when it
// stopped at an ended child of Start's, still waiting for its own Wait:
// waitid shows only one ended child at a time, so the ones behind it are
// reaped on a later call (soon, since that Wait runs already).
func Reap(reaped func(pid int, ws unix.WaitStatus)) (blocked bool) {
	mu.Lock()
	defer mu.Unlock()
	for {
		pid, err := ended()
		if err != nil || pid <= 0 {
			return false // no child at all (ECHILD), or none has ended
		}
		if _, ok := owned[pid]; ok {
			return true
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || got != pid {
			return false
		}
		if reaped != nil {
			reaped(pid, ws)
		}
	}
}

// siPIDOffset is where the kernel's siginfo_t keeps si_pid: after three
// ints, at the pointer alignment of its union of fields.
const siPIDOffset = (12 + unsafe.Sizeof(uintptr(0)) - 1) &^ (unsafe.Sizeof(uintptr(0)) - 1)

// ended returns the pid of one child that has ended, without reaping it,
// or 0 when none has.
func ended() (int, error) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return int(*(*int32)(unsafe.Add(unsafe.Pointer(&info), siPIDOffset))), nil
	}
}
