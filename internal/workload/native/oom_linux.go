package native

import (
	"time"

	"golang.org/x/sys/unix"
)

// sinceBoot is the time since boot on the clock the kernel's log stamps
// its records with (CLOCK_MONOTONIC, as local_clock counts it), or 0.
func sinceBoot() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// oomKilled reads the kernel's log for the OOM killer's kill of pid since
// started (sinceBoot at its start, less a second for the two clocks'
// drift). "" when there is none, or the log cannot be read (dmesg_restrict
// without CAP_SYSLOG). The killer logs its kill just after it sends the
// signal, so on another CPU the victim's end can be seen first: a log
// without the record is read once more, a moment later.
func oomKilled(pid int, started time.Duration) string {
	if r := readOOMRecord(pid, started); r != "" {
		return r
	}
	time.Sleep(50 * time.Millisecond)
	return readOOMRecord(pid, started)
}

func readOOMRecord(pid int, started time.Duration) string {
	// Raw reads: an *os.File would park a read at the log's end on Go's
	// poller until the kernel logs again, where this wants EAGAIN.
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	since := started - time.Second
	buf := make([]byte, 8192) // a read returns one whole record, and fails if it does not fit
	var found string
	for {
		n, err := unix.Read(fd, buf)
		switch {
		case err == unix.EPIPE: // records overwritten under us: go on with the next
			continue
		case err == unix.EINTR:
			continue
		case err != nil || n == 0: // EAGAIN: the end
			return found
		}
		if reason, ok := oomRecord(string(buf[:n]), pid, since); ok {
			found = reason
		}
	}
}
