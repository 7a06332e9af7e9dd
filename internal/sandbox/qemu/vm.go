package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// How long Stop waits for QEMU to quit on its own before killing it.
const (
	quitTimeout = 2 * time.Second
	killGrace   = 2 * time.Second
)

// vm is one QEMU process and the host side of its channels.
type vm struct {
	d     *Driver
	id    string
	dir   string
	log   *slog.Logger
	mach  machine
	args  []string
	clone *template // set when restored from a snapshot

	// guestMeta is written on the config channel; nil for a template, whose
	// agent must never learn an identity.
	guestMeta *agentapi.Metadata

	ln *net.UnixListener
	// files is the host end of the file port (Stage).
	files *filePort
	// configured is closed once the guest has its config (benchmarks
	// split boot time there: before it, the VMM and kernel; after, the agent).
	configured chan struct{}
	cmd        *exec.Cmd
	stderr     bytes.Buffer // QEMU's own messages (bounded by what QEMU says)
	conn       atomic.Pointer[net.Conn]

	done          chan struct{}
	exitErr       error // why it ended; read after done
	failure       atomic.Pointer[error]
	stopRequested atomic.Bool
}

var _ sandbox.Sandbox = (*vm)(nil)

func (d *Driver) newVM(id, dir string, s Shape) *vm {
	return &vm{
		d:          d,
		id:         id,
		dir:        dir,
		log:        d.log.With(logVMID, id),
		configured: make(chan struct{}),
		mach: machine{
			Name:      "nex-" + id,
			Kernel:    d.cfg.Kernel,
			Initrd:    d.cfg.Initrd,
			MemoryMiB: s.MemoryMiB,
			VCPU:      s.VCPU,
			Accel:     d.accel.Accel,
			TBSizeMiB: tbSizeMiB,
			TSCkHz:    d.tsc,
			Forwarder: d.cfg.Forwarder,
		},
	}
}

func (v *vm) ID() string { return v.id }

func (v *vm) PID() int {
	if v.cmd == nil || v.cmd.Process == nil {
		return 0
	}
	return v.cmd.Process.Pid
}

func (v *vm) Done() <-chan struct{} { return v.done }

func (v *vm) Err() error {
	select {
	case <-v.done:
		return v.exitErr
	default:
		return nil
	}
}

func (v *vm) path(name string) string { return filepath.Join(v.dir, name) }

// launch starts QEMU in its own process group with the sandbox dir as its
// working directory, and a goroutine that records why it ended.
func (v *vm) launch() error {
	bin, err := v.d.binary()
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, v.args...)
	cmd.Dir = v.dir
	cmd.Stdout = &v.stderr
	cmd.Stderr = &v.stderr
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("launch %s: %w", bin, err)
	}
	v.cmd = cmd
	v.done = make(chan struct{})
	go v.wait()
	return nil
}

func (v *vm) wait() {
	err := v.cmd.Wait()
	// Unblock the config channel: its accept and reads end here.
	if v.ln != nil {
		v.ln.Close()
	}
	if c := v.conn.Load(); c != nil {
		(*c).Close()
	}
	if v.files != nil {
		v.files.close()
	}
	switch {
	case v.stopRequested.Load():
		v.exitErr = sandbox.ErrStopped
	case v.failure.Load() != nil:
		v.exitErr = *v.failure.Load()
	case err != nil:
		v.exitErr = fmt.Errorf("qemu exited: %w%s", err, v.qemuSaid())
	}
	if v.exitErr != nil && !errors.Is(v.exitErr, sandbox.ErrStopped) {
		v.log.Warn("Machine ended", "error", v.exitErr, logConsole, v.path(consoleFile))
	} else {
		v.log.Info("Machine ended", "reason", v.exitErr)
	}
	close(v.done)
}

// qemuSaid is the last line QEMU printed, to put in an exit error. Read only
// after Wait returned, when nothing writes the buffer any more.
func (v *vm) qemuSaid() string {
	s := strings.TrimSpace(v.stderr.String())
	if s == "" {
		return ""
	}
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return ": " + s
}

// fail ends the VM because of err; Err reports err (unless a stop was asked).
func (v *vm) fail(err error) {
	if v.failure.CompareAndSwap(nil, &err) && !v.stopRequested.Load() {
		v.log.Warn("Machine failed", "error", err)
	}
	v.kill()
}

// kill ends QEMU's whole process group at once.
func (v *vm) kill() {
	if pid := v.PID(); pid > 0 {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// abort undoes a boot that failed part way: QEMU killed and reaped, the
// config socket closed even when QEMU never started.
func (v *vm) abort() {
	v.stopRequested.Store(true)
	v.kill()
	<-v.doneOrNil()
	if v.ln != nil {
		v.ln.Close()
	}
	if v.files != nil {
		v.files.close()
	}
}

// doneOrNil is Done that also works before launch (a closed channel then).
func (v *vm) doneOrNil() <-chan struct{} {
	if v.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return v.done
}

// Stop asks QEMU to quit over QMP and kills it if it has not after a grace
// period. By the time a node calls Stop it has asked the agent to undeploy,
// and a guest whose agent ended has powered off, so usually QEMU is gone or
// going. The guest has no ACPI daemon to act on system_powerdown, so the
// driver asks QEMU itself to quit.
func (v *vm) Stop(ctx context.Context) error {
	v.stopRequested.Store(true)
	done := v.doneOrNil()
	select {
	case <-done:
		return nil
	default:
	}
	qctx, cancel := context.WithTimeout(ctx, quitTimeout)
	if q, err := dialQMP(qctx, v.path(qmpSock)); err == nil {
		_ = q.exec(qctx, "quit", nil, nil)
		q.Close()
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-time.After(killGrace):
	case <-ctx.Done():
	}
	v.kill()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop vm %s: %w", v.id, ctx.Err())
	}
}

// removeStale deletes sockets a previous run may have left in the directory;
// a stale agent.sock or files.sock would make listen fail.
func (v *vm) removeStale() error {
	for _, name := range []string{agentSock, filesSock, qmpSock} {
		if err := os.Remove(v.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
