package process_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// envNodeRole makes the test binary play a node that starts one sandbox and
// then waits to be killed.
const envNodeRole = "NEX_PROCESS_TEST_NODE"

func TestMain(m *testing.M) {
	if dir := os.Getenv(envNodeRole); dir != "" {
		os.Exit(playNode(dir))
	}
	os.Exit(m.Run())
}

// playNode starts a sandbox whose agent has no server to reach (it keeps
// retrying), prints the agent's PID and blocks.
func playNode(dir string) int {
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	d, err := process.New(process.Config{AgentBinary: os.Getenv(sandboxtest.EnvNexBinary)})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	sb, err := d.Start(context.Background(), sandboxtestSpec(dir, string(seed)))
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println(sb.PID())
	select {}
}

func sandboxtestSpec(dir, seed string) sandbox.Spec {
	return sandbox.Spec{ID: "orphan", Dir: dir, Agent: agentapi.Metadata{SandboxID: "orphan", NATSURL: "nats://127.0.0.1:1", Seed: seed}}
}

// A node killed with SIGKILL cannot stop its sandboxes; the kernel's
// parent-death signal must end their agents.
func TestKilledNodeLeavesNoAgent(t *testing.T) {
	nex := sandboxtest.BuildNex(t)
	node := exec.Command(os.Args[0])
	node.Env = append(os.Environ(), envNodeRole+"="+t.TempDir(), sandboxtest.EnvNexBinary+"="+nex)
	out, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	defer node.Wait()
	line, err := bufio.NewReader(out).ReadString('\n')
	pid, perr := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || perr != nil {
		_ = node.Process.Kill()
		t.Fatalf("node said %q: %v %v", line, err, perr)
	}
	if !alive(pid) {
		t.Fatalf("agent %d not running while its node is", pid)
	}
	_ = node.Process.Kill()
	waitGone(t, pid)
}

// An agent killed with SIGKILL cannot stop its workload; the parent-death
// signal must end it.
func TestKilledAgentLeavesNoWorkload(t *testing.T) {
	nex := sandboxtest.BuildNex(t)
	h := sandboxtest.NewHarness(t)
	d, err := process.New(process.Config{AgentBinary: nex})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := h.AddAgent("wlorphan")
	sb, err := d.Start(ctx, a.Spec(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(ctx)
	if _, err := a.WaitHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	r, err := a.Deploy(ctx, agentapi.Deploy{WorkloadID: "w", Name: "sh", Type: "native",
		Argv: []string{"-c", "echo $$ > " + pidFile + "; echo up; exec sleep 600"}}, sh)
	if err != nil || !r.OK {
		t.Fatalf("deploy = %+v, %v", r, err)
	}
	if err := a.WaitLog(ctx, "stdout", "up"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	wpid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if err := syscall.Kill(sb.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sb.Done()
	waitGone(t, wpid)
}

// alive reports whether pid runs (a zombie has finished running).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return !strings.HasPrefix(rest, "Z") && !strings.HasPrefix(rest, "X")
}

func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("process %d outlived its parent", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
