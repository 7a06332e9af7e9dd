// Package qemu is the QEMU microVM sandbox driver: each sandbox is a
// `qemu-system-x86_64 -M microvm` guest booted from nex's own guest image,
// accelerated by KVM where the host really has it and emulated (TCG)
// otherwise. The guest has no network device: it reaches the node's internal
// NATS over a virtio-serial port (internal/vport) and nothing else, and
// learns who it is over a virtio-serial config channel after it has
// booted, which is what lets one booted and snapshotted guest be restored
// many times as fresh clones (Config.Snapshot).
//
// Every choice of command line and every figure behind it is in
// shared/notes/microvm-on-this-host.md.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/vmm"
)

// Defaults.
const (
	DefaultBinary      = "qemu-system-x86_64"
	DefaultMemoryMiB   = 128
	DefaultVCPU        = 1
	DefaultBootTimeout = 60 * time.Second
)

// Log keys.
const (
	logVMID    = "vmid"
	logPID     = "pid"
	logAccel   = "accel"
	logConsole = "console"
	logTook    = vmm.LogTook
)

// Config configures the driver. Kernel and Initrd are required; the rest
// have useful zero values.
type Config struct {
	// QEMUBinary is the VMM; default qemu-system-x86_64 found in PATH.
	QEMUBinary string
	// Kernel is an uncompressed PVH vmlinux, Initrd an uncompressed cpio
	// whose /init is the nex agent (package guestimage builds both).
	Kernel string
	Initrd string
	// Accel forces an accelerator; empty detects one (accel.Detect).
	Accel accel.Kind
	// Snapshot fills sandboxes by restoring clones of a booted template VM
	// instead of booting each one; templates live under SnapshotDir.
	Snapshot    bool
	SnapshotDir string
	// BootTimeout bounds QEMU start → the guest's ready line on the config
	// channel.
	BootTimeout time.Duration
	Log         *slog.Logger
}

// Validate names the first field that is wrong.
func (c Config) Validate() error {
	switch {
	case c.Kernel == "":
		return errors.New("qemu: Kernel is empty (build the guest image: nex rootfs build)")
	case c.Initrd == "":
		return errors.New("qemu: Initrd is empty (build the guest image: nex rootfs build)")
	case c.Accel != "" && c.Accel != accel.KVM && c.Accel != accel.TCG:
		return fmt.Errorf("qemu: Accel %q is neither kvm nor tcg", c.Accel)
	case c.Snapshot && c.SnapshotDir == "":
		return errors.New("qemu: Snapshot is set but SnapshotDir is empty")
	case c.BootTimeout < 0:
		return fmt.Errorf("qemu: BootTimeout %s is negative", c.BootTimeout)
	}
	return nil
}

// Driver starts QEMU microVM sandboxes.
type Driver struct {
	cfg   Config
	accel accel.Choice
	log   *slog.Logger
	tsc   int
	// minMemMiB is the least guest RAM that boots this image: the kernel
	// unpacks the initramfs into RAM while the archive is still there, so a
	// big /init needs twice its size on top of the kernel's own.
	minMemMiB int
	memWarn   sync.Once
	// noACPI: the kernel finds its devices on the command line, so guests
	// boot without ACPI (machine.NoACPI).
	noACPI bool

	tmu       sync.Mutex
	templates map[Shape]*templateEntry
	inputs    func() (string, error) // content hash of kernel+initrd, computed once
	firmware  func() string          // Firmware's path, "" when QEMU has none; found once
}

var (
	_ sandbox.Driver      = (*Driver)(nil)
	_ sandbox.Preflighter = (*Driver)(nil)
)

// New validates c, chooses the accelerator and logs the choice.
func New(c Config) (*Driver, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.QEMUBinary == "" {
		c.QEMUBinary = DefaultBinary
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = DefaultBootTimeout
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	d := &Driver{
		cfg:       c,
		log:       c.Log.With("driver", "qemu"),
		tsc:       hostTSCkHz(),
		templates: map[Shape]*templateEntry{},
	}
	d.minMemMiB = sandbox.MinGuestMemoryMiB(c.Initrd)
	// A kernel that cannot be read here fails the first boot with QEMU's
	// own message, which says more than this error would.
	d.noACPI, _ = guestimage.CmdlineDevices(c.Kernel)
	d.accel = accel.Detect()
	if c.Accel != "" && c.Accel != d.accel.Accel {
		d.accel = accel.Choice{Accel: c.Accel, Reason: fmt.Sprintf("forced by config (detection said: %s)", d.accel.Reason)}
	}
	d.inputs = sync.OnceValues(d.hashInputs)
	d.firmware = sync.OnceValue(d.findFirmware)
	d.log.Info("QEMU accelerator chosen", logAccel, d.accel.Accel, "reason", d.accel.Reason, "acpi", !d.noACPI)
	if d.tsc == 0 {
		d.log.Warn("host TSC frequency unknown (no 'cpu MHz' in /proc/cpuinfo); guests may hang calibrating their TSC")
	}
	return d, nil
}

// Name is the driver's config name.
func (d *Driver) Name() string { return "qemu" }

// Accel is the accelerator the driver uses and why.
func (d *Driver) Accel() accel.Choice { return d.accel }

// Shape is the size of a VM; snapshot templates are kept per shape.
type Shape struct {
	VCPU      int
	MemoryMiB int
}

func (d *Driver) shapeOf(spec sandbox.Spec) Shape {
	s := Shape{VCPU: spec.VCPU, MemoryMiB: spec.MemoryMiB}
	if s.VCPU <= 0 {
		s.VCPU = DefaultVCPU
	}
	if s.MemoryMiB <= 0 {
		s.MemoryMiB = DefaultMemoryMiB
	}
	if s.MemoryMiB < d.minMemMiB {
		d.memWarn.Do(func() {
			d.log.Warn("Raising guest memory: the initramfs would not fit", "asked_mib", s.MemoryMiB,
				"given_mib", d.minMemMiB, "initrd", d.cfg.Initrd)
		})
		s.MemoryMiB = d.minMemMiB
	}
	return s
}

// Start boots a sandbox (or restores a clone of its shape's template when
// Config.Snapshot is set) and returns once QEMU runs the guest. The guest's
// agent is given its identity on the config channel in the background; the
// caller awaits its handshake on the internal NATS.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if err := spec.Agent.Validate(); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	if spec.ID == "" || spec.Dir == "" {
		return nil, fmt.Errorf("start vm: spec needs an ID and a Dir (got %q, %q)", spec.ID, spec.Dir)
	}
	upstream, err := natsUpstream(spec.Agent.NATSURL)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	guest := spec.Agent
	// The agent's connections, and its workloads', go over the NATS port
	// (agentapi.NATSPortURL).
	guest.NATSURL = agentapi.NATSPortURL

	shape := d.shapeOf(spec)
	v := d.newVM(spec.ID, spec.Dir, shape)
	v.upstream = upstream
	v.guestMeta = &guest
	ctx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	boot := coldBoot()
	if d.cfg.Snapshot {
		// A template that cannot be built costs this sandbox a cold boot,
		// not the pool its sandboxes.
		switch t, err := d.template(ctx, shape); {
		case err == nil:
			v.clone, boot = t, cloneBoot()
		case errors.Is(err, errTemplateFailed):
			v.log.Debug("Booting cold: no snapshot template", "error", err)
		default:
			v.log.Warn("Booting cold: no snapshot template", "error", err)
		}
	}
	if err := boot.Run(ctx, v, v.log); err != nil {
		v.abort()
		if v.clone != nil && errors.Is(err, errRestore) {
			d.forgetTemplate(shape, v.clone, err)
		}
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	return v, nil
}

// natsUpstream turns the internal server's URL into the host:port that the
// driver dials for each of the guest's NATS connections (4222 when the URL
// names no port).
func natsUpstream(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("agent nats url %q: %w", raw, err)
	}
	host, p := u.Hostname(), u.Port()
	if host == "" {
		return "", fmt.Errorf("agent nats url %q: no host", raw)
	}
	if p == "" {
		p = "4222"
	}
	if port, err := strconv.Atoi(p); err != nil || port <= 0 || port > 65535 {
		return "", fmt.Errorf("agent nats url %q: bad port", raw)
	}
	return net.JoinHostPort(host, p), nil
}

// findFirmware looks for Firmware where QEMU looks for firmware. Without
// it, VMs boot on QEMU's default microvm firmware, which the warning names.
func (d *Driver) findFirmware() string {
	bin, err := d.binary()
	if err != nil {
		return "" // the launch reports it
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := FindFirmware(ctx, bin, Firmware)
	if p == "" {
		d.log.Warn(noFirmware, "qemu", bin)
	}
	return p
}

// noFirmware says what booting without Firmware means.
const noFirmware = Firmware + " is in none of QEMU's firmware dirs (qemu-system-x86_64 -L help): VMs boot on QEMU's default microvm firmware, and under QEMU 10's, SeaBIOS, about half of the guests reset at boot"

// binary resolves the QEMU executable.
func (d *Driver) binary() (string, error) {
	p, err := exec.LookPath(d.cfg.QEMUBinary)
	if err != nil {
		return "", fmt.Errorf("qemu binary %q not found (fix: apt-get install -y qemu-system-x86): %w", d.cfg.QEMUBinary, err)
	}
	return p, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
