package reaper

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// roleEnv makes the test binary a helper: "child" starts a grandchild that
// exits at once, prints its pid and exits 5; "grandchild" exits 0.
const roleEnv = "REAPER_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "child":
		g := exec.Command(os.Args[0])
		g.Env = append(os.Environ(), roleEnv+"=grandchild")
		if err := g.Start(); err != nil {
			os.Exit(1)
		}
		fmt.Println(g.Process.Pid)
		os.Exit(5) // without waiting: the grandchild is orphaned
	case "grandchild":
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestReapLeavesStartedChildren plays PID 1 (as a sub-reaper): a child it
// started with Start ends, and so does the grandchild it orphaned. Reap must
// leave the child to its own Wait, which must see its exit status, and
// reap the orphan once that Wait is done.
func TestReapLeavesStartedChildren(t *testing.T) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("become a sub-reaper: %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=child")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := Start(cmd); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("grandchild's pid: %v", err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatal(err)
	}
	// The orphan is this process's child once the child has ended.
	waitEnded(t, cmd.Process.Pid)
	waitEnded(t, orphan)

	var reaped []int
	record := func(pid int, ws unix.WaitStatus) { reaped = append(reaped, pid) }
	// The started child has ended: Reap must leave it and say it stopped
	// there. (Whether it reaped the orphan first depends on which thread's
	// list of children the kernel looks at first.)
	if blocked := Reap(record); !blocked || slices.Contains(reaped, cmd.Process.Pid) {
		t.Fatalf("Reap with the started child ended: blocked %v, reaped %v; want blocked, and %d left alone", blocked, reaped, cmd.Process.Pid)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 5 {
		t.Fatalf("the started child's Wait: %v, want exit status 5", err)
	}
	Release(cmd.Process.Pid)

	if blocked := Reap(record); blocked || !reflect.DeepEqual(reaped, []int{orphan}) {
		t.Fatalf("Reap after the Wait: blocked %v, reaped %v; want the orphan %d", blocked, reaped, orphan)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", orphan)); !os.IsNotExist(err) {
		t.Fatalf("the orphan %d is still there after Reap (%v)", orphan, err)
	}
	if blocked := Reap(record); blocked || len(reaped) != 1 {
		t.Fatalf("Reap with no child left: blocked %v, reaped %v", blocked, reaped)
	}
}

// TestStartFailure: a command that cannot start is not recorded.
func TestStartFailure(t *testing.T) {
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(owned)
	}
	before := count()
	if err := Start(exec.Command("/nonexistent/nex-reaper-test")); err == nil {
		t.Fatal("Start of a missing program succeeded")
	}
	if n := count(); n != before {
		t.Fatalf("%d children recorded after a failed Start, %d before", n, before)
	}
}

// waitEnded waits until pid, a child of this process, can be reaped, and
// leaves it unreaped. (A zombie in /proc is not enough: a multi-threaded
// process's leader is one while its other threads still exit.)
func waitEnded(t *testing.T, pid int) {
	t.Helper()
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("wait for %d to end: %v", pid, err)
		}
		return
	}
}
