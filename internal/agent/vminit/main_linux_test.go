package vminit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/pdeath"
)

// The test binary plays extra roles when re-run by a test:
//
//   - ForwardArg: QEMU runs it for each guest connection to the NATS address
//     and it splices that connection (stdin/stdout) to the node's server.
//     QEMU's chardev form of guestfwd carries only one connection, made when
//     QEMU starts, so the per-connection command form is the one that works.
//   - reapRole: the processes of TestReapOrphans.
//   - netifRole: TestInterfaceSetup's process, in a network namespace of
//     its own.
//   - filesRole: TestFileServerFullTmpfs's process, in a mount namespace of
//     its own.
const (
	ForwardArg = "vmtest-forward"
	reapRole   = "VMINIT_TEST_REAP_ROLE"
	netifRole  = "VMINIT_TEST_NETIF"
	filesRole  = "VMINIT_TEST_FILES"
)

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == ForwardArg {
		forwardStdio(os.Args[2])
		os.Exit(0)
	}
	if role := os.Getenv(reapRole); role != "" {
		os.Exit(reapHelper(role))
	}
	if os.Getenv(netifRole) != "" {
		os.Exit(netifHelper())
	}
	if os.Getenv(filesRole) != "" {
		os.Exit(fullTmpfsHelper())
	}
	os.Exit(m.Run())
}

func forwardStdio(addr string) {
	guest, err := net.FileConn(os.Stdin)
	if err != nil {
		return
	}
	defer guest.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { io.Copy(up, guest); up.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(guest, up); guest.Close(); done <- struct{}{} }()
	<-done
	<-done
}

// TestReapOrphans runs PID 1's reaping loop (in a sub-reaper, so orphans
// come to it) while the agent, in the same process, starts workloads the
// way it does (pdeath.Start) and waits for them: each workload double-forks
// and exits 5 at once. Every workload's exit status must reach the agent
// (not be stolen by the reaper, which would make its wait fail), and every
// orphaned grandchild must be reaped.
func TestReapOrphans(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), reapRole+"=init")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("init helper: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if !strings.Contains(string(out), "all workloads' statuses seen, all orphans reaped") {
		t.Fatal("the agent lost a workload's status, or an orphan was not reaped")
	}
	if !strings.Contains(string(out), "reaped orphan") {
		t.Fatal("the reaper logged no orphan")
	}
}

// reapRounds is how many workloads TestReapOrphans starts, one after the
// other. The race for a workload's status is usually won by its own wait,
// already blocked when it exits; package reaper's test checks without a
// race that the reaper leaves such a child alone.
const reapRounds = 20

func reapHelper(role string) int {
	self := func(role string) *exec.Cmd {
		c := exec.Command(os.Args[0])
		c.Env = append(withoutRole(), reapRole+"="+role)
		return c
	}
	switch role {
	case "init":
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Println("subreaper:", err)
			return 1
		}
		log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGCHLD)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go reapOrphans(ctx, sigs, log)
		for i := range reapRounds {
			// The workload prints its child's pid and exits 5 at once.
			c := self("child")
			stdout, _ := c.StdoutPipe()
			exited := make(chan error, 1)
			if err := pdeath.Start(c, nil, func(err error) { exited <- err }); err != nil {
				fmt.Println("start workload:", err)
				return 1
			}
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			err := <-exited
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 5 {
				fmt.Printf("round %d: the workload's status was lost: %v\n", i, err)
				return 1
			}
			orphan, _ := strconv.Atoi(strings.TrimSpace(line))
			if !gone(orphan, 20*time.Second) {
				fmt.Printf("round %d: orphan %d never reaped\n", i, orphan)
				return 1
			}
		}
		fmt.Println("all workloads' statuses seen, all orphans reaped")
		return 0
	case "child":
		g := self("grandchild")
		if err := g.Start(); err != nil {
			return 1
		}
		fmt.Println(g.Process.Pid)
		return 5
	case "grandchild":
		return 0
	}
	return 1
}

// gone reports whether pid leaves /proc (is reaped) within d.
func gone(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return true
		}
	}
	return false
}

func withoutRole() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, reapRole+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// TestInterfaceSetup brings an interface up and addresses it the way init
// does eth0, in a network namespace of the test's own (only its loopback
// is there; the host's namespace is left alone).
func TestInterfaceSetup(t *testing.T) {
	if ok, err := ifExists("no-such-if0"); ok || err != nil {
		t.Fatalf("ifExists(no-such-if0) = %v, %v", ok, err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), netifRole+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		t.Skip("no new network namespace for this user")
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out)
}

func netifHelper() int {
	if ok, err := ifExists("lo"); !ok {
		fmt.Println("lo missing:", err)
		return 1
	}
	if err := ifAddr("lo", net.ParseIP("10.0.2.15"), 24); err != nil {
		fmt.Println(err)
		return 1
	}
	if err := ifUp("lo"); err != nil {
		fmt.Println(err)
		return 1
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	addrs, _ := lo.Addrs()
	fmt.Println("lo:", lo.Flags, addrs)
	if lo.Flags&net.FlagUp == 0 {
		fmt.Println("lo is not up")
		return 1
	}
	for _, a := range addrs {
		if a.String() == "10.0.2.15/24" {
			return 0
		}
	}
	fmt.Println("10.0.2.15/24 not on lo")
	return 1
}
