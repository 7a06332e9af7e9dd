package fctest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/pdeath"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

// QEMU boots a machine as a QEMU microvm (KVM when the host really has it,
// TCG otherwise), with the command line package qemu measured best here.
//
// The vsock device is translated, because QEMU here cannot offer one
// (vhost-vsock needs the host's /dev/vhost-vsock, which this host lacks):
//
//   - the guest gets no vsock device but a virtio-net NIC on user-mode
//     networking with restrict=on, so it reaches nothing but the forwards;
//   - each `nex.nats=vsock://2:<P>` word of the boot args becomes
//     `nex.nats=nats://10.0.2.100:<P>` (agentapi.GuestNATSAddr's address);
//   - a guestfwd carries each guest TCP connection to 10.0.2.100:<P> through
//     `<Forwarder> unix:<uds_path>_<P>` to the unix socket Firecracker would
//     connect to for a guest vsock connection to host port P.
//
// The host side therefore sees exactly what Firecracker would give it; the
// guest side speaks TCP, so the guest's vsock code does not run here.
type QEMU struct {
	// Binary is the QEMU executable; default qemu-system-x86_64.
	Binary string
	// Forwarder is the command QEMU runs per guest connection, given
	// unix:<path> as its last argument: `nex vm-forward`.
	Forwarder []string
	// Console gets the guest's serial console (Firecracker's stdout);
	// Stderr gets QEMU's own messages.
	Console io.Writer
	Stderr  io.Writer
	// Accel forces an accelerator; empty detects one.
	Accel accel.Kind
	Log   *slog.Logger
}

// guestHostIP is where the guest finds the host's forwards.
var guestHostIP, _, _ = net.SplitHostPort(agentapi.GuestNATSAddr)

// TranslateBootArgs rewrites the boot args of a Firecracker guest for QEMU:
// vsock URLs of the node's NATS become the guestfwd address, and the ports
// they name are returned for the forwards. tscKHz, when not 0 (under TCG),
// is added as tsc_early_khz (a microvm guest under TCG hangs calibrating its
// TSC without it; Firecracker's guests have kvm-clock), with tsc=reliable,
// as the qemu driver adds it under TCG: a guest starved of CPU otherwise
// gave up the TSC for counted ticks, and one in CI then hung in its
// power-off for minutes, a kernel worker stuck.
func TranslateBootArgs(args string, tscKHz int) (string, []uint32, error) {
	words := strings.Fields(args)
	var ports []uint32
	for i, w := range words {
		k, val, ok := strings.Cut(w, "=")
		if !ok || k != agentapi.ArgNATSURL {
			continue
		}
		a, isVsock, err := agentapi.ParseVsockURL(val)
		if err != nil {
			return "", nil, err
		}
		if !isVsock {
			continue
		}
		if a.CID != agentapi.HostCID {
			return "", nil, fmt.Errorf("%s: only the host (CID %d) is reachable over vsock", w, agentapi.HostCID)
		}
		words[i] = k + "=nats://" + net.JoinHostPort(guestHostIP, strconv.FormatUint(uint64(a.Port), 10))
		ports = append(ports, a.Port)
	}
	if tscKHz > 0 && !strings.Contains(args, "tsc_early_khz=") {
		words = append(words, "tsc_early_khz="+strconv.Itoa(tscKHz))
	}
	if tscKHz > 0 && !strings.Contains(args, "tsc=") {
		words = append(words, qemu.TCGClockArg)
	}
	return strings.Join(words, " "), ports, nil
}

func (q QEMU) accel() accel.Kind {
	if q.Accel != "" {
		return q.Accel
	}
	return accel.Detect().Accel
}

// Args is QEMU's command line for m.
func (q QEMU) Args(m Machine) ([]string, error) {
	kind := q.accel()
	tsc := 0
	if kind == accel.TCG {
		tsc = qemu.HostTSCkHz()
	}
	cmdline, ports, err := TranslateBootArgs(m.BootArgs, tsc)
	if err != nil {
		return nil, err
	}
	a := []string{
		"-name", "fctest",
		// Firecracker gives the guest its virtio-mmio devices on the command
		// line; a kernel that reads them there boots here the same way,
		// without ACPI. Debian's kernels cannot (docs/FIRECRACKER.md) and
		// get ACPI.
		"-M", qemu.MicrovmMachine(m.Kernel),
		"-m", strconv.Itoa(m.MemSizeMiB),
		"-smp", strconv.Itoa(m.VCPUCount),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-accel", string(kind),
		// Firecracker's i8042, whose reset line is how a guest booted with
		// reboot=k ends it: with -no-reboot, QEMU exits on the same pulse.
		// Without one the kernel's reboot falls through to a jump into the
		// firmware, which usually ended QEMU with a triple fault but once
		// in a CI run left the guest hung and the VMM running.
		"-device", "i8042",
	}
	if kind == accel.KVM {
		a = append(a, "-cpu", "host")
	}
	a = append(a, "-kernel", m.Kernel)
	if m.Initrd != "" {
		a = append(a, "-initrd", m.Initrd)
	}
	a = append(a, "-append", cmdline,
		// Firecracker's serial console is its stdout.
		"-serial", "stdio")
	if m.VsockUDS != "" && len(ports) > 0 {
		if len(q.Forwarder) == 0 {
			return nil, errors.New("the vsock device needs QEMU.Forwarder (nex vm-forward)")
		}
		netdev := "user,id=n0,restrict=on"
		for _, p := range ports {
			guest := net.JoinHostPort(guestHostIP, strconv.FormatUint(uint64(p), 10))
			target := qemu.UnixPrefix + m.VsockUDS + "_" + strconv.FormatUint(uint64(p), 10)
			netdev += "," + qemu.GuestForward(guest, q.Forwarder, target)
		}
		a = append(a, "-netdev", netdev, "-device", "virtio-net-device,netdev=n0")
	}
	return a, nil
}

// Boot starts QEMU for m.
func (q QEMU) Boot(m Machine) (VM, error) {
	args, err := q.Args(m)
	if err != nil {
		return nil, err
	}
	bin := q.Binary
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	if bin, err = exec.LookPath(bin); err != nil {
		return nil, err
	}
	// Firecracker has no firmware: it jumps to the kernel. qboot, the
	// qemu driver's firmware too, does little more.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	fw := qemu.FindFirmware(ctx, bin, qemu.Firmware)
	cancel()
	if fw != "" {
		args = append([]string{"-bios", fw}, args...)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = q.Console, q.Stderr
	// QEMU stays in the server's process group (the driver kills the group)
	// and dies with the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	v := &qemuVM{cmd: cmd, done: make(chan struct{})}
	if err := v.start(); err != nil {
		return nil, fmt.Errorf("launch %s: %w", bin, err)
	}
	if q.Log != nil {
		q.Log.Info("qemu started", "pid", cmd.Process.Pid, "args", strings.Join(args, " "))
	}
	return v, nil
}

type qemuVM struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	mu   sync.Mutex
}

// start starts QEMU so that its parent-death signal holds (pdeath).
func (v *qemuVM) start() error {
	return pdeath.Start(v.cmd, nil, func(err error) {
		if err != nil {
			err = fmt.Errorf("qemu: %w", err)
		}
		v.mu.Lock()
		v.err = err
		v.mu.Unlock()
		close(v.done)
	})
}

func (v *qemuVM) Done() <-chan struct{} { return v.done }

func (v *qemuVM) Err() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.err
}

// CtrlAltDel: the guest kernel's default reaction is an immediate reboot,
// which with reboot=k ends Firecracker. The stand-in keeps no QEMU monitor
// to press the keys through, so the end is emulated: SIGTERM makes QEMU
// exit cleanly.
func (v *qemuVM) CtrlAltDel() error { return v.cmd.Process.Signal(syscall.SIGTERM) }

func (v *qemuVM) Kill() { _ = v.cmd.Process.Kill() }
