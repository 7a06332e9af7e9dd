package trial

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// probe copies testdata/probe (built once per test process) into a
// directory of the test's own as name ("probe" or "hang": its file's name
// says what it does) and returns its path and the directory, where jails
// go (the same file system).
func probe(t *testing.T, name string) (path, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a trial start needs root (chroot, setuid, namespaces)")
	}
	b, err := os.ReadFile(sandboxtest.BuildPackage(t, "trialprobe", "./internal/trial/testdata/probe"))
	if err != nil {
		t.Fatal(err)
	}
	dir = t.TempDir()
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o700); err != nil { // as a staged file is
		t.Fatal(err)
	}
	return path, filepath.Join(dir, "trial")
}

// leftovers are the processes whose root is under dir: a trial start's.
func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		if root, err := os.Readlink(p + "/root"); err == nil && strings.HasPrefix(root, dir) {
			found = append(found, p+" "+root)
		}
	}
	return found
}

// awaitNoLeftovers fails t unless the processes of a trial start under dir
// are all gone within a few seconds (the kernel ends a PID namespace's
// other processes after its init, not with it).
func awaitNoLeftovers(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := leftovers(t, dir)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of the trial start left: %v", left)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTrialIsJailed: the probe, checking its jail from inside, finds its
// arguments, itself nobody, the init of its own PID namespace, unable to
// write or list its root or see the VM's files, with a network of its own
// (a loopback and nothing else) where its NATS URL names the trial's
// server, which sends its subscription a request and takes the reply,
// after which Run ends it. The child it started is gone with it, and so is
// the jail.
func TestTrialIsJailed(t *testing.T) {
	path, dir := probe(t, "probe")
	res, err := Run(context.Background(), dir, path, []string{"--flag", "two words"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Its checks come before its subscription: a failed one ends it
	// with its number before any request.
	if !res.Done || res.Requests != 1 || res.Replies != 1 {
		t.Fatalf("probe: %+v, want it ended by Run once its request was answered (exit codes: see testdata/probe)", res)
	}
	awaitNoLeftovers(t, dir)
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 0 {
		t.Fatalf("jails left in %s: %v %v", dir, ents, err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("the staged file after its trial start: %v %v", st, err)
	}
}

// TestTrialTimeLimit: a program that runs on is killed at the time limit,
// the child it started with it.
func TestTrialTimeLimit(t *testing.T) {
	path, dir := probe(t, "hang")
	res, err := Run(context.Background(), dir, path, nil, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Killed || res.Exit != "signal: killed" {
		t.Fatalf("hang after its time: %+v", res)
	}
	awaitNoLeftovers(t, dir)
}

// TestRunnerEndStopsTheTrial: End (a deploy) kills the trial start under
// way and returns once it has ended; a Start after it does nothing. Stop of
// another file leaves it alone; Stop of its own ends it.
func TestRunnerEndStopsTheTrial(t *testing.T) {
	path, dir := probe(t, "hang")
	ended := make(chan Result, 4)
	r := &Runner{Dir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Timeout: time.Hour,
		Ended: func(_ string, res Result, err error) {
			if err != nil {
				t.Error(err)
			}
			ended <- res
		}}

	awaitRunning := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for len(leftovers(t, dir)) < 2 { // the program and its child
			if time.Now().After(deadline) {
				t.Fatal("the trial start never ran")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	r.Start(path, nil)
	awaitRunning()
	r.Stop(filepath.Join(filepath.Dir(path), "other"))
	select {
	case res := <-ended:
		t.Fatalf("Stop of another file ended the trial start: %+v", res)
	case <-time.After(200 * time.Millisecond):
	}
	r.Stop(path)
	if res := <-ended; !res.Killed {
		t.Fatalf("after Stop: %+v", res)
	}
	awaitNoLeftovers(t, dir)

	r.Start(path, nil)
	awaitRunning()
	r.End()
	select {
	case res := <-ended:
		if !res.Killed {
			t.Fatalf("after End: %+v", res)
		}
	default:
		t.Fatal("End returned before the trial start had ended")
	}
	awaitNoLeftovers(t, dir)
	r.Start(path, nil)
	time.Sleep(200 * time.Millisecond)
	if left := leftovers(t, dir); len(left) != 0 {
		t.Fatalf("a trial start after End: %v", left)
	}
}

// TestTrialOfADataFile: a file that is no program gets no trial start.
func TestTrialOfADataFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "data")
	if err := os.WriteFile(path, []byte("#!/bin/sh\necho hi\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := Run(context.Background(), filepath.Join(dir, "trial"), path, nil, time.Second); !errors.Is(err, ErrNotProgram) {
		t.Fatalf("trial start of a script: %v, want ErrNotProgram", err)
	}
}
