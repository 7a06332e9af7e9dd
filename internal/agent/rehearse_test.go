package agent_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// rehearsalScript writes its PID to dir/pid, says something on both
// streams, then runs body.
func rehearsalScript(dir, body string) []string {
	return []string{"/bin/sh", "-c", "echo $$ > " + filepath.Join(dir, "pid") +
		"; echo rehearsal-out; echo rehearsal-err >&2; " + body}
}

// waitPID waits for the rehearsal's PID file.
func waitPID(t *testing.T, dir string) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(filepath.Join(dir, "pid"))
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil {
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("the rehearsal did not run")
	return 0
}

// gone reports whether process pid no longer exists (reaped, not a zombie).
func gone(pid int) bool { return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) }

func noRehearsalLogs(t *testing.T, a *sandboxtest.Agent) {
	t.Helper()
	for _, l := range a.Logs() {
		if strings.HasPrefix(l.Text, "rehearsal-") {
			t.Fatalf("the rehearsal's output reached the node: %+v", l)
		}
	}
}

// TestRehearsalRunsOnceAfterHandshake: the rehearsal runs after the
// handshake, ends by itself, and its output stays in the sandbox; a deploy
// after it runs as ever.
func TestRehearsalRunsOnceAfterHandshake(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("reh1")
	dir, work := t.TempDir(), t.TempDir()
	var more atomic.Int32
	moreDone := make(chan struct{})
	runAgent(t, testCtx(t), a, agent.Options{
		WorkDir:   work,
		Rehearsal: rehearsalScript(dir, "echo ran >> "+filepath.Join(dir, "runs")),
		RehearseMore: func(context.Context) error {
			defer close(moreDone)
			if b, _ := os.ReadFile(filepath.Join(dir, "runs")); string(b) != "ran\n" {
				t.Errorf("RehearseMore before the command's run (runs %q)", b)
			}
			more.Add(1)
			return nil
		},
	})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	pid := waitPID(t, dir)
	for !gone(pid) {
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-moreDone:
	case <-testCtx(t).Done():
		t.Fatal("RehearseMore never ran")
	}
	// The agent's part of the rehearsal (a made-up deploy, its staged file
	// taken) ran before RehearseMore and left nothing in the work dir.
	if left, err := os.ReadDir(work); err != nil || len(left) != 0 {
		t.Fatalf("the work dir holds %v after the rehearsal (%v)", left, err)
	}
	if r := shell(t, a, "w1", "echo deployed"); !r.OK {
		t.Fatalf("deploy after the rehearsal: %+v", r)
	}
	if err := a.WaitLog(testCtx(t), "stdout", "deployed"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "runs")); string(b) != "ran\n" {
		t.Fatalf("the rehearsal ran %q times; want once", b)
	}
	if n := more.Load(); n != 1 {
		t.Fatalf("RehearseMore ran %d times; want once", n)
	}
	noRehearsalLogs(t, a)
}

// TestDeployEndsRehearseMore: a deploy that comes while RehearseMore runs
// ends it (its context) before the workload starts.
func TestDeployEndsRehearseMore(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("reh4")
	dir := t.TempDir()
	started, ended := make(chan struct{}), make(chan struct{})
	runAgent(t, testCtx(t), a, agent.Options{
		Rehearsal: rehearsalScript(dir, "true"),
		RehearseMore: func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			close(ended)
			return ctx.Err()
		},
	})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-testCtx(t).Done():
		t.Fatal("RehearseMore never ran")
	}
	if r := shell(t, a, "w1", "echo deployed"); !r.OK {
		t.Fatalf("deploy during RehearseMore: %+v", r)
	}
	select {
	case <-ended:
	default:
		t.Fatal("RehearseMore still runs once the workload has started")
	}
	if err := a.WaitLog(testCtx(t), "stdout", "deployed"); err != nil {
		t.Fatal(err)
	}
}

// TestDeployEndsRehearsal: a deploy that comes while the rehearsal runs
// ends the rehearsal's process before the workload starts.
func TestDeployEndsRehearsal(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("reh2")
	dir := t.TempDir()
	runAgent(t, testCtx(t), a, agent.Options{Rehearsal: rehearsalScript(dir, "exec sleep 60")})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	pid := waitPID(t, dir)
	if gone(pid) {
		t.Fatal("the rehearsal ended before the deploy")
	}
	if r := shell(t, a, "w1", "echo deployed"); !r.OK {
		t.Fatalf("deploy during the rehearsal: %+v", r)
	}
	if !gone(pid) {
		t.Fatalf("the rehearsal's process %d still runs once the workload has started", pid)
	}
	if err := a.WaitLog(testCtx(t), "stdout", "deployed"); err != nil {
		t.Fatal(err)
	}
	noRehearsalLogs(t, a)
}

// TestUndeployEndsRehearsal: an undeploy while the rehearsal runs ends the
// agent at once, the rehearsal's process with it.
func TestUndeployEndsRehearsal(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("reh3")
	dir := t.TempDir()
	done := runAgent(t, testCtx(t), a, agent.Options{Rehearsal: rehearsalScript(dir, "exec sleep 60")})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	pid := waitPID(t, dir)
	if _, err := h.Node.RequestWithContext(testCtx(t), agentapi.UndeploySubject(a.ID), nil); err != nil {
		t.Fatal(err)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run after an undeploy = %v", err)
	}
	if !gone(pid) {
		t.Fatalf("the rehearsal's process %d outlived its agent", pid)
	}
}
