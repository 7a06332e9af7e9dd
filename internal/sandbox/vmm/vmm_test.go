package vmm

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/sandbox"
)

type rec struct{ ran []string }

func stepOf(name string, err error) Step[*rec] {
	return Step[*rec]{name, func(_ context.Context, r *rec) error { r.ran = append(r.ran, name); return err }}
}

func TestStepsVariantsLeaveTheBaseAlone(t *testing.T) {
	base := Steps[*rec]{stepOf("a", nil), stepOf("b", nil), stepOf("c", nil)}
	v := base.InsertBefore("b", stepOf("x", nil)).Replace("c", stepOf("C", nil)).Append(stepOf("d", nil))
	var r rec
	if err := v.Run(context.Background(), &r, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.ran, ","); got != "a,x,b,C,d" {
		t.Fatalf("variant ran %s", got)
	}
	r = rec{}
	if err := base.Run(context.Background(), &r, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.ran, ","); got != "a,b,c" {
		t.Fatalf("base changed: ran %s", got)
	}
}

func TestStepsStopAtTheFirstErrorAndNameIt(t *testing.T) {
	boom := errors.New("boom")
	s := Steps[*rec]{stepOf("a", nil), stepOf("launch", boom), stepOf("c", nil)}
	var r rec
	err := s.Run(context.Background(), &r, slog.New(slog.DiscardHandler))
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "launch: ") {
		t.Fatalf("error %v", err)
	}
	if len(r.ran) != 2 {
		t.Fatalf("ran %v after the error", r.ran)
	}
}

func TestStepsUnknownNamePanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic for an unknown step")
		}
	}()
	Steps[*rec]{stepOf("a", nil)}.Replace("nope", stepOf("b", nil))
}

func start(t *testing.T, script string, o Options) *Process {
	t.Helper()
	o.Name = "vmm"
	o.Log = slog.New(slog.DiscardHandler)
	p, err := Start(exec.Command("sh", "-c", script), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill(); <-p.Done() })
	return p
}

func waitDone(t *testing.T, p *Process) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the process did not end")
	}
}

func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }

// Stop kills the whole process group, a child the VMM started included,
// and reports the end as a requested stop.
func TestStopKillsTheGroup(t *testing.T) {
	var exited atomic.Bool
	p := start(t, `sleep 60 & wait`, Options{OnExit: func() { exited.Store(true) }})
	if p.PID() <= 0 || p.Err() != nil {
		t.Fatalf("pid %d err %v", p.PID(), p.Err())
	}
	askErr := errors.New("no monitor")
	if err := p.Stop(context.Background(), func(context.Context) error { return askErr }, time.Second, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(p.Err(), sandbox.ErrStopped) || !exited.Load() {
		t.Fatalf("err %v, OnExit ran %v", p.Err(), exited.Load())
	}
	if alive(p.PID()) {
		t.Fatal("the VMM is still there")
	}
	// The group is gone too (the kernel may take a moment to reap the
	// orphaned sleep, which init adopts).
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(-p.PID(), 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("a member of the VMM's process group survived")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A VMM that does what it is asked ends before the grace runs out.
func TestStopAsksFirst(t *testing.T) {
	p := start(t, `trap 'exit 0' TERM; while :; do sleep 0.05; done`, Options{})
	ask := func(context.Context) error { return syscall.Kill(p.PID(), syscall.SIGTERM) }
	done := make(chan error, 1)
	go func() { done <- p.Stop(context.Background(), ask, time.Second, time.Hour) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Stop waited for the grace although the VMM had ended")
	}
	if !errors.Is(p.Err(), sandbox.ErrStopped) {
		t.Fatalf("err %v", p.Err())
	}
}

func TestExitIsExplained(t *testing.T) {
	clean := start(t, `exit 0`, Options{})
	waitDone(t, clean)
	if clean.Err() != nil {
		t.Fatalf("clean exit: %v", clean.Err())
	}

	died := start(t, `exit 3`, Options{Said: func() string { return "could not open the kernel" }})
	waitDone(t, died)
	if err := died.Err(); err == nil || !strings.Contains(err.Error(), "vmm exited: exit status 3: could not open the kernel") {
		t.Fatalf("died: %v", err)
	}

	failed := start(t, `sleep 60`, Options{})
	why := errors.New("config channel: guest gone")
	failed.Fail(why)
	waitDone(t, failed)
	if !errors.Is(failed.Err(), why) {
		t.Fatalf("failed: %v", failed.Err())
	}
}

func TestAbortReaps(t *testing.T) {
	p := start(t, `sleep 60`, Options{})
	p.Abort()
	if !isClosed(p.Done()) || alive(p.PID()) {
		t.Fatal("abort left the VMM running")
	}
}

func TestStartOfAMissingBinaryFails(t *testing.T) {
	_, err := Start(exec.Command("/nonexistent/vmm-"+strconv.Itoa(time.Now().Nanosecond())), Options{Name: "vmm"})
	if err == nil || !strings.Contains(err.Error(), "launch") {
		t.Fatalf("err %v", err)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// ConsoleTail quotes the console's last lines without the terminal control
// sequences a firmware writes, and reads only the end of a long log.
func TestConsoleTail(t *testing.T) {
	dir := t.TempDir()
	console := filepath.Join(dir, "console.log")
	seabios := "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.3)\r\nBooting from ROM..\n\n"
	if err := os.WriteFile(console, []byte(seabios), 0o600); err != nil {
		t.Fatal(err)
	}
	p := start(t, `exit 0`, Options{Console: console})
	waitDone(t, p)
	if got := p.ConsoleTail(5); got != "SeaBIOS (version 1.16.3) | Booting from ROM.." {
		t.Errorf("tail of a firmware's lines = %q", got)
	}
	if got := p.ConsoleTail(1); got != "Booting from ROM.." {
		t.Errorf("last line = %q", got)
	}

	long := strings.Repeat("[    0.100000] a kernel line\n", 2000) + "[    1.000000] Kernel panic - not syncing: VFS\n"
	if err := os.WriteFile(console, []byte(long), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := p.ConsoleTail(2); got != "[    0.100000] a kernel line | [    1.000000] Kernel panic - not syncing: VFS" {
		t.Errorf("tail of a long log = %q", got)
	}

	if got := start(t, `exit 0`, Options{Console: filepath.Join(dir, "none")}).ConsoleTail(3); got != "" {
		t.Errorf("no console file: %q", got)
	}
}
