package pdeath

import (
	"os/exec"
	"testing"

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
