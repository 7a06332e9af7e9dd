package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// How long Stop waits for Firecracker to end after SendCtrlAltDel before it
// kills it. The guest kernel reboots at once on Ctrl+Alt+Del, and with
// reboot=k that ends Firecracker, so a live guest is gone well within it.
const (
	ctrlAltDelGrace = 2 * time.Second
	actionTimeout   = time.Second
)

// vm is one Firecracker process and the host side of its vsock.
type vm struct {
	d     *Driver
	id    string
	dir   string
	log   *slog.Logger
	size  MachineConfig
	guest agentapi.Metadata // as the guest sees it
	nats  string            // host:port the vsock's NATS port is forwarded to
	api   *Client

	cmd *exec.Cmd
	pid int

	vsockMu     sync.Mutex
	vsockLn     net.Listener
	vsockClosed bool
	// proxyCtx ends the vsock forwards when the VM ends.
	proxyCtx    context.Context
	proxyCancel context.CancelFunc

	done          chan struct{}
	exitErr       error // why it ended; read after done
	stopRequested atomic.Bool
}

var _ sandbox.Sandbox = (*vm)(nil)

func (d *Driver) newVM(spec sandbox.Spec, nats string) *vm {
	v := &vm{
		d:     d,
		id:    spec.ID,
		dir:   spec.Dir,
		log:   d.log.With(logVMID, spec.ID),
		size:  d.size(spec),
		guest: guestMetadata(spec.Agent),
		nats:  nats,
	}
	v.api = NewClient(v.path(APISocket))
	v.proxyCtx, v.proxyCancel = context.WithCancel(context.Background())
	return v
}

func (v *vm) ID() string { return v.id }

func (v *vm) PID() int { return v.pid }

func (v *vm) Done() <-chan struct{} { return v.done }

// Err is sandbox.ErrStopped after a requested stop, nil when the guest ended
// by itself and Firecracker exited cleanly, otherwise why it died.
func (v *vm) Err() error {
	select {
	case <-v.done:
		return v.exitErr
	default:
		return nil
	}
}

func (v *vm) path(name string) string { return filepath.Join(v.dir, name) }

// vsockPortPath is where Firecracker connects when the guest connects to
// host port port: "<uds_path>_<port>".
func (v *vm) vsockPortPath(port uint32) string {
	return v.path(VsockSocket) + "_" + strconv.FormatUint(uint64(port), 10)
}

// isInstanceID reports whether id is what Firecracker takes as --id:
// 1–64 letters, digits and '-'.
func isInstanceID(id string) bool { return len(id) <= 64 && api.OnlyNameChars(id, "-") }

// args is the VMM's command line: the configured extra arguments, the API
// socket and, when the sandbox id is one Firecracker accepts, --id (which
// names the instance in its logs and in GET /).
func (v *vm) args() []string {
	a := append([]string(nil), v.d.cfg.Args...)
	a = append(a, "--api-sock", v.path(APISocket))
	if isInstanceID(v.id) {
		a = append(a, "--id", v.id)
	}
	return a
}

// launch starts Firecracker in its own process group with the guest console
// (its stdout) in console.log and its own messages in firecracker.log.
func (v *vm) launch() error {
	bin, err := v.d.binary()
	if err != nil {
		return err
	}
	console, err := os.OpenFile(v.path(ConsoleFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer console.Close()
	vmmLog, err := os.OpenFile(v.path(VMMLogFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer vmmLog.Close()
	cmd := exec.Command(bin, v.args()...)
	cmd.Dir = v.dir
	cmd.Stdout = console
	cmd.Stderr = vmmLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	v.cmd = cmd
	v.done = make(chan struct{})
	if err := v.startLocked(); err != nil {
		close(v.done)
		return fmt.Errorf("launch %s: %w", bin, err)
	}
	return nil
}

// startLocked starts Firecracker from a goroutine locked to its OS thread and
// waits for it there. Linux sends the parent-death signal when the thread
// that forked the child exits, and Go ends threads whose goroutine exits
// while locked (as network-namespace code does): a thread held for the VM's
// whole life is never one of those.
func (v *vm) startLocked() error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := v.cmd.Start(); err != nil {
			started <- err
			return
		}
		v.pid = v.cmd.Process.Pid
		started <- nil
		v.wait()
	}()
	return <-started
}

func (v *vm) wait() {
	err := v.cmd.Wait()
	v.closeVsock()
	v.proxyCancel()
	v.api.Close()
	switch {
	case v.stopRequested.Load():
		v.exitErr = sandbox.ErrStopped
	case err != nil:
		v.exitErr = fmt.Errorf("firecracker exited: %w%s", err, v.vmmSaid())
	}
	if v.exitErr != nil && !errors.Is(v.exitErr, sandbox.ErrStopped) {
		v.log.Warn("Machine ended", "error", v.exitErr, logConsole, v.path(ConsoleFile))
	} else {
		v.log.Info("Machine ended", "reason", v.exitErr)
	}
	close(v.done)
}

// vmmSaid is the last line Firecracker wrote to stderr, for an exit error.
func (v *vm) vmmSaid() string {
	b, err := os.ReadFile(v.path(VMMLogFile))
	if err != nil {
		return ""
	}
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return ""
	}
	return ": " + s
}

// kill ends Firecracker's whole process group at once.
func (v *vm) kill() {
	if v.pid > 0 {
		_ = syscall.Kill(-v.pid, syscall.SIGKILL)
	}
}

// abort undoes a boot that failed part way: Firecracker killed and reaped,
// the vsock listener closed even when Firecracker never started.
func (v *vm) abort() {
	v.stopRequested.Store(true)
	v.kill()
	if v.done != nil {
		<-v.done
	}
	v.closeVsock()
	v.proxyCancel()
	v.api.Close()
}

// Stop presses Ctrl+Alt+Del on the guest (whose kernel reboots at once,
// which ends Firecracker), waits briefly, then kills the process group. It
// returns once Firecracker is gone.
func (v *vm) Stop(ctx context.Context) error {
	v.stopRequested.Store(true)
	select {
	case <-v.done:
		return nil
	default:
	}
	actx, cancel := context.WithTimeout(ctx, actionTimeout)
	err := v.api.Action(actx, SendCtrlAltDel)
	cancel()
	grace := ctrlAltDelGrace
	if err != nil {
		v.log.Debug("SendCtrlAltDel failed; killing", "error", err)
		grace = 0
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-v.done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	v.kill()
	select {
	case <-v.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop vm %s: %w", v.id, ctx.Err())
	}
}
