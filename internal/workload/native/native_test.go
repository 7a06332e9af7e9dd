package native

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/workload"
)

// syncBuffer is written by exec's copy goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// script writes an executable shell script; /bin/sh is on every host these
// tests run on.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "wl")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T, path string, env []string, args ...string) (workload.Handle, *syncBuffer, *syncBuffer) {
	t.Helper()
	var out, errOut syncBuffer
	h, err := Runtime{}.Start(context.Background(), workload.Spec{
		Name: "wl", Path: path, Args: args, Env: env, Dir: filepath.Dir(path), Stdout: &out, Stderr: &errOut,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Stop(context.Background()) })
	return h, &out, &errOut
}

func wait(t *testing.T, h workload.Handle) workload.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ex, err := h.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func TestExitCodeOutputAndEnvironment(t *testing.T) {
	p := script(t, `echo "out $1 $FOO"; echo err >&2; env | grep -c NEX_ >&2; printf tail; exit 3`)
	t.Setenv("NEX_AGENT_SEED", "must-not-leak")
	h, out, errOut := start(t, p, []string{"FOO=bar", "PATH=/usr/bin:/bin"}, "one")
	ex := wait(t, h)
	if ex.Code != 3 || ex.Message != "exited with code 3" {
		t.Fatalf("exit = %+v", ex)
	}
	// Output is complete once Wait returns, the unterminated tail included.
	if got := out.String(); got != "out one bar\ntail" {
		t.Fatalf("stdout = %q", got)
	}
	if got := errOut.String(); got != "err\n0\n" {
		t.Fatalf("stderr = %q (the agent's environment leaked?)", got)
	}
}

func TestStopGraceful(t *testing.T) {
	p := script(t, `trap 'echo bye; exit 0' TERM; echo ready; while :; do sleep 0.05; done`)
	h, out, _ := start(t, p, nil)
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if ex := wait(t, h); ex.Code != 0 || !strings.Contains(out.String(), "bye") {
		t.Fatalf("exit = %+v, stdout %q", ex, out.String())
	}
	if err := h.Stop(ctx); err != nil { // again, after exit
		t.Fatal(err)
	}
}

func TestStopForcesWhenIgnored(t *testing.T) {
	p := script(t, `trap '' TERM; echo ready; while :; do sleep 0.05; done`)
	h, out, _ := start(t, p, nil)
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	ex := wait(t, h)
	if ex.Code != 128+int(syscall.SIGKILL) || !strings.HasPrefix(ex.Message, "killed by signal 9") {
		t.Fatalf("exit = %+v", ex)
	}
}

func TestStopReachesTheProcessGroup(t *testing.T) {
	// The child sleeps in the background and holds stdout open; stopping the
	// group ends it too, so Wait does not hang on the pipe.
	p := script(t, `sleep 300 & echo $!; wait`)
	h, out, _ := start(t, p, nil)
	waitFor(t, func() bool { return strings.HasSuffix(out.String(), "\n") })
	child := strings.TrimSpace(out.String())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	wait(t, h)
	waitFor(t, func() bool {
		_, err := os.Stat("/proc/" + child)
		return errors.Is(err, os.ErrNotExist) || isZombie(child)
	})
}

func TestStartRefusesNonExecutable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(p, []byte("not a program\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Runtime{}.Start(context.Background(), workload.Spec{Name: "text", Path: p, Dir: filepath.Dir(p)})
	if !errors.Is(err, ErrNotRunnable) || !strings.Contains(err.Error(), "start text: cannot run here: not an executable") {
		t.Fatalf("err = %v", err)
	}
}

func isZombie(pid string) bool {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return true
	}
	_, rest, _ := strings.Cut(string(b), ") ")
	return strings.HasPrefix(rest, "Z")
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
