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
	"sync/atomic"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/vmm"
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
	// nats takes QEMU's connection to the NATS port, the guest's NATS
	// connections multiplexed on it (internal/vport); upstream is the
	// node's NATS (host:port) each is spliced to.
	nats     *net.UnixListener
	upstream string
	// portConns counts the guest's connections over the NATS port.
	portConns atomic.Int64
	// files is the host end of the file port (Stage).
	files *filePort
	// configured is closed once the guest has its config (benchmarks
	// split boot time there: before it, the VMM and kernel; after, the agent).
	configured chan struct{}
	stderr     bytes.Buffer // QEMU's own messages (bounded by what QEMU says)
	// qmpFile (qmpFD) and, for a clone, state (stateFD) are what QEMU
	// inherits; the driver's copies are closed once QEMU has started.
	qmpFile, state *os.File
	conn           atomic.Pointer[net.Conn]

	proc *vmm.Process // nil until launched
}

var _ sandbox.Sandbox = (*vm)(nil)

func (d *Driver) newVM(id, dir string, s Shape) *vm {
	return &vm{
		d:          d,
		id:         id,
		dir:        dir,
		log:        d.log.With(logVMID, id),
		configured: make(chan struct{}),
		mach:       d.machine(id, s),
	}
}

// machine is the command line's content for VM id of shape s.
func (d *Driver) machine(id string, s Shape) machine {
	return machine{
		Name:      "nex-" + id,
		Kernel:    d.cfg.Kernel,
		Initrd:    d.cfg.Initrd,
		MemoryMiB: s.MemoryMiB,
		VCPU:      s.VCPU,
		Accel:     d.accel.Accel,
		TBSizeMiB: tbSizeMiB,
		TSCkHz:    d.tsc,
		NoACPI:    d.noACPI,
		BIOS:      d.firmware(),
	}
}

func (v *vm) ID() string { return v.id }

func (v *vm) PID() int { return v.proc.PID() }

// Done is closed once QEMU has exited (at once for a VM never launched).
func (v *vm) Done() <-chan struct{} { return v.proc.Done() }

// ConsoleTail is the end of the guest's console log (sandbox.ConsoleTailer).
func (v *vm) ConsoleTail(n int) string { return v.proc.ConsoleTail(n) }

// Err is sandbox.ErrStopped after a requested stop, the failure that made
// the driver kill the VM, nil when the guest powered off by itself, else
// why QEMU died.
func (v *vm) Err() error { return v.proc.Err() }

func (v *vm) path(name string) string { return filepath.Join(v.dir, name) }

// launch starts QEMU (vmm.Start: own process group, killed with the node)
// with the sandbox dir as its working directory.
func (v *vm) launch() error {
	bin, err := v.d.binary()
	if err != nil {
		return err
	}
	defer v.closeInherited()
	cmd := exec.Command(bin, v.args...)
	cmd.Dir = v.dir
	cmd.ExtraFiles = []*os.File{v.qmpFile} // qmpFD
	if v.state != nil {
		cmd.ExtraFiles = append(cmd.ExtraFiles, v.state) // stateFD
	}
	cmd.Stdout = &v.stderr
	cmd.Stderr = &v.stderr
	v.proc, err = vmm.Start(cmd, vmm.Options{
		Name:    "qemu",
		Log:     v.log,
		Console: v.path(consoleFile),
		Said:    v.qemuSaid,
		OnExit:  v.closeChannels,
	})
	return err
}

// closeInherited closes the driver's copies of what QEMU inherits.
func (v *vm) closeInherited() {
	for _, f := range []*os.File{v.qmpFile, v.state} {
		if f != nil {
			f.Close()
		}
	}
	v.qmpFile, v.state = nil, nil
}

// closeChannels closes the host ends of the config, file and NATS ports:
// their accepts and reads end here. The guest's spliced NATS connections
// end as QEMU's ends of them close.
func (v *vm) closeChannels() {
	if v.ln != nil {
		v.ln.Close()
	}
	if v.nats != nil {
		v.nats.Close()
	}
	if c := v.conn.Load(); c != nil {
		(*c).Close()
	}
	if v.files != nil {
		v.files.close()
	}
}

// qemuSaid is what QEMU printed, for an exit error. Read only after Wait
// returned, when nothing writes the buffer any more.
func (v *vm) qemuSaid() string { return v.stderr.String() }

// fail ends the VM because of err; Err reports err (unless a stop was asked).
func (v *vm) fail(err error) {
	if v.proc != nil {
		v.proc.Fail(err)
	}
}

// abort undoes a boot that failed part way: QEMU killed and reaped, the
// channels closed even when QEMU never started.
func (v *vm) abort() {
	if v.proc != nil {
		v.proc.Abort()
	}
	v.closeInherited()
	v.closeChannels()
}

// Stop asks QEMU to quit over QMP and kills it if it has not after a grace
// period. By the time a node calls Stop it has asked the agent to undeploy,
// and a guest whose agent ended has powered off, so usually QEMU is gone or
// going. The guest has no ACPI daemon to act on system_powerdown, so the
// driver asks QEMU itself to quit.
func (v *vm) Stop(ctx context.Context) error {
	if v.proc == nil {
		return nil
	}
	quit := func(ctx context.Context) error {
		q, err := dialQMP(ctx, v.path(qmpSock))
		if err != nil {
			return err
		}
		defer q.Close()
		return q.exec(ctx, "quit", nil, nil)
	}
	if err := v.proc.Stop(ctx, quit, quitTimeout, killGrace); err != nil {
		return fmt.Errorf("stop vm %s: %w", v.id, err)
	}
	return nil
}

// listenQMP makes QMP's listening socket for QEMU to inherit: once QEMU
// has it, the socket file stays (QEMU does not know its name) until
// removeStale deletes it before the directory's next VM.
func (v *vm) listenQMP() error {
	ln, err := v.listenUnix(qmpSock)
	if err != nil {
		return err
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	if err != nil {
		return fmt.Errorf("qmp socket: %w", err)
	}
	v.qmpFile = f
	return nil
}

// listenUnix listens on the unix socket name in the VM's directory.
func (v *vm) listenUnix(name string) (*net.UnixListener, error) {
	return net.ListenUnix("unix", &net.UnixAddr{Name: v.path(name), Net: "unix"})
}

// removeStale deletes sockets a previous run may have left in the directory;
// a stale agent.sock or files.sock would make listen fail.
func (v *vm) removeStale() error {
	for _, name := range []string{agentSock, filesSock, natsSock, qmpSock} {
		if err := os.Remove(v.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
