package firecracker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/vmm"
)

// Booting is data (vmm.Steps): a snapshot restore, should it come, is this
// list with the configuration steps swapped for a PUT /snapshot/load.
type steps = vmm.Steps[*vm]

// Step names; an error of Start names the step it came from.
const (
	stepPrepareDir    = "prepare dir"
	stepLaunch        = "launch"
	stepWritePID      = "write pid"
	stepAwaitAPI      = "await api socket"
	stepMachineConfig = "machine config"
	stepBootSource    = "boot source"
	stepVsock         = "vsock"
	stepListenVsock   = "listen vsock"
	stepInstanceStart = "instance start"
	stepLogStarted    = "log machine started"
)

func bootSteps() steps {
	return steps{
		{Name: stepPrepareDir, Run: prepareDir},
		{Name: stepLaunch, Run: launch},
		{Name: stepWritePID, Run: writePID},
		{Name: stepAwaitAPI, Run: awaitAPI},
		{Name: stepMachineConfig, Run: putMachineConfig},
		{Name: stepBootSource, Run: putBootSource},
		{Name: stepVsock, Run: putVsock},
		{Name: stepListenVsock, Run: listenVsock},
		{Name: stepInstanceStart, Run: instanceStart},
		{Name: stepLogStarted, Run: logStarted},
	}
}

// Guest kernel command line. console=ttyS0: Firecracker's serial port, which
// it writes to its stdout. reboot=k: a guest reboot pulses the i8042 reset
// line, which ends Firecracker (it never reboots a guest), and panic=-1
// reboots at once, so a guest that ends for any reason ends the VMM. pci=off:
// Firecracker's devices are virtio-mmio. The i8042 options are from
// Firecracker's own default command line, which boot_args replaces: its
// i8042 has no mouse, no multiplexer and nothing for PnP to find, so the
// kernel need not probe for them (under fctest's QEMU, which has an i8042
// too, boots took as long with them as without). The rest are the boot-time
// savings measured for the qemu driver (shared/notes/microvm-on-this-host.md).
const kernelCmdline = "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd quiet cryptomgr.notests " +
	"initcall_blacklist=init_kprobe_trace mitigations=off nokaslr"

// BootArgs is the kernel command line of a guest with metadata m (whose
// NATSURL is already the guest's vsock URL).
func BootArgs(m agentapi.Metadata) string { return kernelCmdline + " " + m.KernelArgs() }

// maxSocketPath is the longest unix socket path (sun_path holds 108 bytes
// with the terminating NUL). Firecracker is given absolute paths, and the
// vsock's per-port sockets add "_<port>".
const maxSocketPath = 107

func prepareDir(ctx context.Context, v *vm) error {
	st, err := os.Stat(v.dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", v.dir)
	}
	if p := v.vsockPortPath(agentapi.NATSVsockPort); len(p) > maxSocketPath {
		return fmt.Errorf("socket path %s is %d bytes, more than a unix socket takes (%d): use a shorter state dir",
			p, len(p), maxSocketPath)
	}
	// Sockets a previous run left would make Firecracker's binds and ours
	// fail.
	for _, p := range []string{v.path(APISocket), v.path(VsockSocket), v.vsockPortPath(agentapi.NATSVsockPort)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func launch(ctx context.Context, v *vm) error { return v.launch() }

func writePID(ctx context.Context, v *vm) error { return sandbox.WritePID(v.dir, v.PID()) }

// awaitAPI polls the API socket until Firecracker answers, it exits, or ctx
// ends.
func awaitAPI(ctx context.Context, v *vm) error {
	t := time.NewTicker(apiPoll)
	defer t.Stop()
	for {
		actx, cancel := context.WithTimeout(ctx, apiPoll*4)
		info, err := v.api.Describe(actx)
		cancel()
		if err == nil {
			v.log.Debug("VMM API up", "vmm_version", info.VMMVersion, "state", info.State)
			return nil
		}
		select {
		case <-v.Done():
			if err := v.Err(); err != nil {
				return err
			}
			return errors.New("firecracker exited before its API answered")
		case <-ctx.Done():
			return fmt.Errorf("no answer on %s: %w (last: %v)", v.api.Socket(), ctx.Err(), err)
		case <-t.C:
		}
	}
}

// apiPoll is how often awaitAPI tries the socket; Firecracker binds it
// within milliseconds of starting.
const apiPoll = 5 * time.Millisecond

func putMachineConfig(ctx context.Context, v *vm) error {
	return v.api.PutMachineConfig(ctx, v.size)
}

func putBootSource(ctx context.Context, v *vm) error {
	return v.api.PutBootSource(ctx, BootSource{
		KernelImagePath: v.d.cfg.Kernel,
		InitrdPath:      v.d.cfg.Initrd,
		BootArgs:        BootArgs(v.guest),
	})
}

func putVsock(ctx context.Context, v *vm) error {
	return v.api.PutVsock(ctx, Vsock{GuestCID: agentapi.GuestCID, UDSPath: v.path(VsockSocket)})
}

// listenVsock takes the host side of the guest's connections to the node's
// NATS before the guest can make any.
func listenVsock(ctx context.Context, v *vm) error { return v.listenVsock() }

func instanceStart(ctx context.Context, v *vm) error { return v.api.Action(ctx, InstanceStart) }

// logStarted is for debugging the boot steps; the node logs the started
// machine once, with LogAttrs.
func logStarted(ctx context.Context, v *vm) error {
	v.log.Debug("Machine started", append([]any{logPID, v.PID()}, v.LogAttrs()...)...)
	return nil
}

// LogAttrs implements sandbox.Attrs.
func (v *vm) LogAttrs() []any {
	return []any{"vcpus", v.size.VCPUCount, "mem_mib", v.size.MemSizeMiB,
		logSocket, v.api.Socket(), logConsole, v.path(ConsoleFile)}
}
