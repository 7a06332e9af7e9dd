// Package firecracker is the Firecracker microVM sandbox driver. Each sandbox
// is one `firecracker --api-sock <dir>/fc.sock` process, configured and
// booted through Firecracker's REST API (net/http over the unix socket): the
// machine's size, nex's guest image as kernel and initrd, and a vsock device
// whose host side is the only way out of the guest. The guest's agent learns
// who it is from the kernel command line (agentapi.Metadata.KernelArgs) and
// reaches the node's internal NATS at vsock://2:4222, which Firecracker
// turns into a connection to the unix socket <dir>/v.sock_4222, which the
// driver forwards to the node's NATS on loopback.
//
// Firecracker needs KVM. On hosts without it (the machine this was written
// on has neither KVM nor a firecracker binary) the driver is tested against
// package fctest: a stand-in that serves the same API on the same socket,
// checks payloads and order, and boots the same guest image with QEMU. See
// docs/FIRECRACKER.md for what was run where.
package firecracker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os/exec"
	"strconv"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Defaults.
const (
	DefaultBinary       = "firecracker"
	DefaultVCPU         = 1
	DefaultMemoryMiB    = 128
	DefaultStartTimeout = 30 * time.Second
)

// Names of a sandbox's files inside its directory.
const (
	APISocket   = "fc.sock"
	VsockSocket = "v.sock"
	ConsoleFile = "console.log"
	// VMMLogFile holds what Firecracker writes to stderr.
	VMMLogFile = "firecracker.log"
)

// Log keys.
const (
	logVMID    = "vmid"
	logPID     = "pid"
	logConsole = "console"
	logSocket  = "api_socket"
)

// Config configures the driver. Kernel and Initrd are required; the rest
// have useful zero values.
type Config struct {
	// Binary is the VMM; default firecracker found in PATH. Tests point it
	// at fctest's server, which speaks the same API.
	Binary string
	// Args go before --api-sock on the VMM's command line (e.g. "--level",
	// "Debug"); tests pass fctest's own flags here.
	Args []string
	// Kernel is an uncompressed vmlinux, Initrd an uncompressed cpio whose
	// /init is the nex agent (package guestimage builds both).
	Kernel string
	Initrd string
	// StartTimeout bounds launch → InstanceStart answered.
	StartTimeout time.Duration
	Log          *slog.Logger
}

// Validate names the first field that is wrong.
func (c Config) Validate() error {
	switch {
	case c.Kernel == "":
		return errors.New("firecracker: Kernel is empty (build the guest image: nex rootfs build)")
	case c.Initrd == "":
		return errors.New("firecracker: Initrd is empty (build the guest image: nex rootfs build)")
	case c.StartTimeout < 0:
		return fmt.Errorf("firecracker: StartTimeout %s is negative", c.StartTimeout)
	}
	return nil
}

// Driver starts Firecracker microVM sandboxes.
type Driver struct {
	cfg Config
	log *slog.Logger
	// minMemMiB is the least guest RAM that boots this image (see
	// sandbox.MinGuestMemoryMiB).
	minMemMiB int
}

var (
	_ sandbox.Driver      = (*Driver)(nil)
	_ sandbox.Preflighter = (*Driver)(nil)
)

// New validates c and fills in its defaults.
func New(c Config) (*Driver, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return &Driver{cfg: c, log: c.Log.With("driver", "firecracker"), minMemMiB: sandbox.MinGuestMemoryMiB(c.Initrd)}, nil
}

// Name is the driver's config name.
func (d *Driver) Name() string { return "firecracker" }

// Start launches Firecracker, configures and boots the machine through its
// API, and returns once InstanceStart has been answered; the caller awaits
// the agent's handshake on the internal NATS.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if err := spec.Agent.Validate(); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	if spec.ID == "" || spec.Dir == "" {
		return nil, fmt.Errorf("start vm: spec needs an ID and a Dir (got %q, %q)", spec.ID, spec.Dir)
	}
	nats, err := natsAddr(spec.Agent.NATSURL)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	v := d.newVM(spec, nats)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	if err := bootSteps().Run(ctx, v, v.log); err != nil {
		v.abort()
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	return v, nil
}

// natsAddr is the host:port the driver forwards the guest's vsock
// connections to: the internal server's loopback address.
func natsAddr(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("agent nats url %q: %w", raw, err)
	}
	p := u.Port()
	if p == "" {
		p = "4222"
	}
	if n, err := strconv.Atoi(p); err != nil || n <= 0 || n > 65535 {
		return "", fmt.Errorf("agent nats url %q: bad port", raw)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("agent nats url %q: no host", raw)
	}
	return net.JoinHostPort(u.Hostname(), p), nil
}

// guestMetadata is the agent's metadata as the guest sees it: the node's
// NATS behind the vsock device.
func guestMetadata(m agentapi.Metadata) agentapi.Metadata {
	m.NATSURL = agentapi.VsockAddr{CID: agentapi.HostCID, Port: agentapi.NATSVsockPort}.URL()
	return m
}

// size is the machine a spec asks for, with the defaults and the image's
// memory floor applied.
func (d *Driver) size(spec sandbox.Spec) MachineConfig {
	m := MachineConfig{VCPUCount: spec.VCPU, MemSizeMiB: spec.MemoryMiB}
	if m.VCPUCount <= 0 {
		m.VCPUCount = DefaultVCPU
	}
	if m.MemSizeMiB <= 0 {
		m.MemSizeMiB = DefaultMemoryMiB
	}
	if m.MemSizeMiB < d.minMemMiB {
		d.log.Debug("Raising guest memory: the initramfs would not fit", "asked_mib", m.MemSizeMiB,
			"given_mib", d.minMemMiB, "initrd", d.cfg.Initrd)
		m.MemSizeMiB = d.minMemMiB
	}
	return m
}

// binary resolves the VMM executable.
func (d *Driver) binary() (string, error) {
	p, err := exec.LookPath(d.cfg.Binary)
	if err != nil {
		return "", fmt.Errorf("firecracker binary %q not found (fix: %s): %w", d.cfg.Binary, FixInstall, err)
	}
	return p, nil
}
