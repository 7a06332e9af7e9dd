// Package native runs a workload that is an executable file: a static ELF in
// any sandbox, or a dynamic one where the host's libraries are visible (the
// process sandbox).
package native

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/pdeath"
	"github.com/nex-engine/nex/internal/workload"
)

// outputGrace bounds how long Wait keeps reading output after the workload's
// main process exited: a child it left behind may hold the pipes open.
const outputGrace = 2 * time.Second

// Runtime runs executables. The zero value is ready to use.
type Runtime struct{}

var _ workload.Runtime = Runtime{}

// Start execs spec.Path in its own process group, so Stop reaches every
// process the workload started, and so that a dead agent takes its workload
// with it (parent-death signal).
func (Runtime) Start(ctx context.Context, spec workload.Spec) (workload.Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	argv0 := spec.Name
	if argv0 == "" {
		argv0 = spec.Path
	}
	env := spec.Env
	if env == nil {
		env = []string{} // nil would mean the agent's own environment
	}
	// "text file busy": some process forked while the file was open for
	// writing still holds that descriptor until it execs (a known race of
	// fork/exec in multi-threaded programs); it lets go within moments.
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		cmd := &exec.Cmd{
			Path:        spec.Path,
			Args:        append([]string{argv0}, spec.Args...),
			Env:         env,
			Dir:         spec.Dir,
			Stdout:      spec.Stdout,
			Stderr:      spec.Stderr,
			SysProcAttr: sysProcAttr(),
			WaitDelay:   outputGrace,
		}
		h := &handle{cmd: cmd, done: make(chan struct{})}
		if err = h.start(); err == nil {
			return h, nil
		}
		if !errors.Is(err, syscall.ETXTBSY) {
			break
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	// The kernel says ENOENT for a missing loader, and ENOEXEC for a file
	// it cannot run at all: say what the file is instead.
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOEXEC) {
		if why := Check(spec.Path, true); errors.Is(why, ErrNotRunnable) {
			err = why
		}
	}
	return nil, fmt.Errorf("start %s: %w", argv0, err)
}

type handle struct {
	cmd     *exec.Cmd
	pid     int
	started time.Duration // sinceBoot
	killed  atomic.Bool   // Stop sent SIGKILL
	done    chan struct{}
	exit    workload.Exit
}

// start starts the workload so that its parent-death signal holds
// (pdeath) and records its exit.
func (h *handle) start() error {
	h.started = sinceBoot()
	return pdeath.Start(h.cmd, func() { h.pid = h.cmd.Process.Pid }, func(err error) {
		h.exit = exitOf(h.cmd.ProcessState, err)
		if h.exit.Code == 128+int(syscall.SIGKILL) && !h.killed.Load() {
			if oom := oomKilled(h.pid, h.started); oom != "" {
				h.exit.Message += " " + oom
				h.exit.OutOfMemory = true
			}
		}
		close(h.done)
	})
}

func (h *handle) Wait(ctx context.Context) (workload.Exit, error) {
	select {
	case <-h.done:
		return h.exit, nil
	case <-ctx.Done():
		return workload.Exit{}, ctx.Err()
	}
}

func (h *handle) Stop(ctx context.Context) error {
	select {
	case <-h.done:
		return nil
	default:
	}
	if err := h.signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-h.done:
		return nil
	case <-ctx.Done():
	}
	h.killed.Store(true)
	if err := h.signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-h.done
	return nil
}

// signal sends sig to the workload's process group (its id is the leader's
// PID, thanks to Setpgid).
func (h *handle) signal(sig syscall.Signal) error {
	err := syscall.Kill(-h.pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil // already gone; Wait is about to see it
	}
	if err != nil {
		return fmt.Errorf("signal workload %d: %w", h.pid, err)
	}
	return nil
}

func exitOf(ps *os.ProcessState, err error) workload.Exit {
	if ps == nil {
		return workload.Exit{Code: -1, Message: fmt.Sprintf("wait: %v", err)}
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		sig := ws.Signal()
		return workload.Exit{Code: 128 + int(sig), Message: fmt.Sprintf("killed by signal %d (%s)", int(sig), sig)}
	}
	code := ps.ExitCode()
	return workload.Exit{Code: code, Message: fmt.Sprintf("exited with code %d", code)}
}
