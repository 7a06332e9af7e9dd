package pdeath

import (
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestAwaitExitWaitsForTheExit: awaitExit returns once the process has
// exited (it is a zombie, not yet waited for), and leaves it to be waited
// for.
func TestAwaitExitWaitsForTheExit(t *testing.T) {
	cmd := exec.Command("sh", "-c", "sleep 0.2; exit 7")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	awaitExit(cmd.Process.Pid)
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	if info.Signo == 0 {
		t.Fatal("awaitExit returned while the process still ran")
	}
	if err := cmd.Wait(); cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 7 {
		t.Fatalf("Wait after awaitExit: %v, %v; want exit status 7", err, cmd.ProcessState)
	}
}

// TestAwaitExitOfAnEndedProcess: a process that ended before its pidfd was
// polled. The poller hears of the exit once, edge-triggered, as soon as it
// runs (here while the test sleeps), and the read that follows must see it
// then, not wait for another edge that never comes. A deploy's rehearsal
// in a VM (a fork and exec of a 132-byte true) hung so, now and then.
func TestAwaitExitOfAnEndedProcess(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	pid := cmd.Process.Pid
	var info unix.Siginfo
	for info.Signo == 0 { // a zombie, not yet reaped
		if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
			t.Fatal(err)
		}
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		t.Skipf("no pidfd: %v", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	if _, err := f.SyscallConn(); err != nil { // registered with the poller
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // the poller runs and hears of it
	done := make(chan struct{})
	go func() { awaitReadable(f); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("awaitExit waits for an exit that has happened")
	}
}
