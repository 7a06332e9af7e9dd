package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/pdeath"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Options describe a VMM process to Start.
type Options struct {
	// Name is the VMM's name in messages ("qemu exited: …").
	Name string
	Log  *slog.Logger
	// Console is the guest console's file, named when the VM dies.
	Console string
	// Said returns what the VMM wrote about itself; its last line goes in
	// an exit error. It is called after the process has been reaped.
	Said func() string
	// OnExit runs once the process has been reaped, before Done closes:
	// it closes what the VM's host side holds open (listeners, proxies).
	OnExit func()
}

// Process is one running VMM.
type Process struct {
	o    Options
	cmd  *exec.Cmd
	pid  int
	done chan struct{}
	// exitErr is why it ended; read after done.
	exitErr       error
	failure       atomic.Pointer[error]
	stopRequested atomic.Bool
}

// Start runs cmd in its own process group (so the whole group can be
// killed) with SIGKILL as its parent-death signal, which holds for its
// whole life (pdeath).
func Start(cmd *exec.Cmd, o Options) (*Process, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	p := &Process{o: o, cmd: cmd, done: make(chan struct{})}
	if err := pdeath.Start(cmd, func() { p.pid = cmd.Process.Pid }, p.wait); err != nil {
		return nil, fmt.Errorf("launch %s: %w", cmd.Path, err)
	}
	return p, nil
}

func (p *Process) wait(err error) {
	if p.o.OnExit != nil {
		p.o.OnExit()
	}
	switch {
	case p.stopRequested.Load():
		p.exitErr = sandbox.ErrStopped
	case p.failure.Load() != nil:
		p.exitErr = *p.failure.Load()
	case err != nil:
		said := ""
		if p.o.Said != nil {
			said = lastLine(p.o.Said())
		}
		if said != "" {
			said = ": " + said
		}
		p.exitErr = fmt.Errorf("%s exited: %w%s", p.o.Name, err, said)
	}
	if p.exitErr != nil && !errors.Is(p.exitErr, sandbox.ErrStopped) {
		p.o.Log.Warn("Machine ended", "error", p.exitErr, "console", p.o.Console)
	} else {
		p.o.Log.Info("Machine ended", "reason", p.exitErr)
	}
	close(p.done)
}

// PID is the VMM's process id (its process group's too); 0 for a nil
// Process (not launched).
func (p *Process) PID() int {
	if p == nil {
		return 0
	}
	return p.pid
}

// closed stands for the Done of a VMM that never started.
var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done is closed once the VMM has exited and been reaped; a nil Process
// (not launched) is done.
func (p *Process) Done() <-chan struct{} {
	if p == nil {
		return closed
	}
	return p.done
}

// Err is nil while the VMM runs and when it ended cleanly by itself;
// sandbox.ErrStopped after a requested stop; otherwise why it died.
func (p *Process) Err() error {
	if p == nil {
		return nil
	}
	select {
	case <-p.done:
		return p.exitErr
	default:
		return nil
	}
}

// Fail ends the VMM because of err, which Err then reports (unless a stop
// was asked for first).
func (p *Process) Fail(err error) {
	if p.failure.CompareAndSwap(nil, &err) && !p.stopRequested.Load() {
		p.o.Log.Warn("Machine failed", "error", err)
	}
	p.Kill()
}

// Kill ends the VMM's whole process group at once.
func (p *Process) Kill() {
	if p.pid > 0 {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
}

// Abort undoes a start that failed part way: the VMM killed and reaped.
func (p *Process) Abort() {
	p.stopRequested.Store(true)
	p.Kill()
	<-p.done
}

// Stop asks the VMM to end with ask (bounded by askTimeout), gives it
// grace to do so (none when ask failed), then kills its process group. It
// returns once the VMM is gone, or with ctx's error.
func (p *Process) Stop(ctx context.Context, ask func(context.Context) error, askTimeout, grace time.Duration) error {
	p.stopRequested.Store(true)
	select {
	case <-p.done:
		return nil
	default:
	}
	actx, cancel := context.WithTimeout(ctx, askTimeout)
	err := ask(actx)
	cancel()
	if err != nil {
		p.o.Log.Debug("asking the VMM to end failed; killing it", "error", err)
		grace = 0
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	p.Kill()
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop %s %d: %w", p.o.Name, p.pid, ctx.Err())
	}
}

// ConsoleTail returns at most n of the guest console's last non-blank
// lines (sandbox.FileTail); "" when there is no console or nothing in it.
func (p *Process) ConsoleTail(n int) string {
	if p == nil || p.o.Console == "" {
		return ""
	}
	return sandbox.FileTail(p.o.Console, n)
}

// lastLine is the last non-blank line of s.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
