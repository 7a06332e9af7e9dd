package firecracker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/vmm"
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

	proc *vmm.Process // nil until launched

	vsockMu     sync.Mutex
	vsockLn     net.Listener
	vsockClosed bool
	// proxyCtx ends the vsock forwards when the VM ends.
	proxyCtx    context.Context
	proxyCancel context.CancelFunc
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

func (v *vm) PID() int { return v.proc.PID() }

func (v *vm) Done() <-chan struct{} { return v.proc.Done() }

// ConsoleTail is the end of the guest's console log (sandbox.ConsoleTailer).
func (v *vm) ConsoleTail(n int) string { return v.proc.ConsoleTail(n) }

// Err is sandbox.ErrStopped after a requested stop, nil when the guest ended
// by itself and Firecracker exited cleanly, otherwise why it died.
func (v *vm) Err() error { return v.proc.Err() }

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
	v.proc, err = vmm.Start(cmd, vmm.Options{
		Name:    "firecracker",
		Log:     v.log,
		Console: v.path(ConsoleFile),
		Said:    v.vmmSaid,
		OnExit:  v.closeHostSide,
	})
	return err
}

// closeHostSide ends what the host holds for the VM: the vsock listener,
// its forwards and the API client.
func (v *vm) closeHostSide() {
	v.closeVsock()
	v.proxyCancel()
	v.api.Close()
}

// vmmSaid is what Firecracker wrote to stderr, for an exit error.
func (v *vm) vmmSaid() string {
	b, _ := os.ReadFile(v.path(VMMLogFile))
	return string(b)
}

// abort undoes a boot that failed part way: Firecracker killed and reaped,
// the host side closed even when Firecracker never started.
func (v *vm) abort() {
	if v.proc != nil {
		v.proc.Abort()
	}
	v.closeHostSide()
}

// Stop presses Ctrl+Alt+Del on the guest (whose kernel reboots at once,
// which ends Firecracker), waits briefly, then kills the process group. It
// returns once Firecracker is gone.
func (v *vm) Stop(ctx context.Context) error {
	ctrlAltDel := func(ctx context.Context) error { return v.api.Action(ctx, SendCtrlAltDel) }
	if err := v.proc.Stop(ctx, ctrlAltDel, actionTimeout, ctrlAltDelGrace); err != nil {
		return fmt.Errorf("stop vm %s: %w", v.id, err)
	}
	return nil
}
