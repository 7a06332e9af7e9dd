package vminit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/guestimage"
)

// Virtio device ids: virtio-serial (the "console" device that carries
// named ports) and virtio-net.
const (
	virtioConsoleID = guestimage.VirtioConsole
	virtioNet       = guestimage.VirtioNet
	virtioBlock     = guestimage.VirtioBlock
)

// pollEvery is how often the waits for devices poll.
const pollEvery = 5 * time.Millisecond

// hasVirtioDevice reports whether the virtio bus under sysfs has a device
// of the given id. It tells a VM with a config port (QEMU) from one without
// (Firecracker) at once, instead of waiting for a port that cannot come.
func hasVirtioDevice(sysfs string, id int) bool {
	devs, _ := filepath.Glob(filepath.Join(sysfs, "bus", "virtio", "devices", "*", "device"))
	for _, d := range devs {
		b, err := os.ReadFile(d)
		if err != nil {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 0, 32)
		if err == nil && int(v) == id {
			return true
		}
	}
	return false
}

// findPort returns the virtio-serial port (e.g. vport0p1) whose name is
// name, scanning sysfs as udev would; "" when there is none yet.
func findPort(sysfs, name string) string {
	names, _ := filepath.Glob(filepath.Join(sysfs, "class", "virtio-ports", "*", "name"))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err == nil && strings.TrimSpace(string(b)) == name {
			return filepath.Base(filepath.Dir(n))
		}
	}
	return ""
}

// waitPort polls for the named port: the host names ports over the control
// queue after the driver has probed, a little after the module loads.
func waitPort(ctx context.Context, sysfs, name string) (string, error) {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		if p := findPort(sysfs, name); p != "" {
			return p, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no virtio-serial port named %s: %w", name, ctx.Err())
		case <-t.C:
		}
	}
}

// portDevice returns /dev/<port>, creating the node from sysfs's major:minor
// when devtmpfs has not (yet) made it.
func portDevice(sysfs, devDir, port string, mknod func(path string, major, minor uint32) error) (string, error) {
	return sysfsDevice(filepath.Join(sysfs, "class", "virtio-ports", port, "dev"), filepath.Join(devDir, port), mknod)
}

// sysfsDevice returns dev, first making it with mknod from the
// "major:minor" in the sysfs file numbers when it does not exist.
func sysfsDevice(numbers, dev string, mknod func(path string, major, minor uint32) error) (string, error) {
	if _, err := os.Stat(dev); err == nil {
		return dev, nil
	}
	name := filepath.Base(dev)
	b, err := os.ReadFile(numbers)
	if err != nil {
		return "", fmt.Errorf("device numbers of %s: %w", name, err)
	}
	maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	ma, err1 := strconv.ParseUint(maj, 10, 32)
	mi, err2 := strconv.ParseUint(min, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return "", fmt.Errorf("device numbers of %s: bad %q", name, b)
	}
	if err := mknod(dev, uint32(ma), uint32(mi)); err != nil {
		return "", fmt.Errorf("mknod %s: %w", dev, err)
	}
	return dev, nil
}

// exchangeConfig speaks the guest's side of the config channel: announce
// readiness, read one JSON line.
func exchangeConfig(rw io.ReadWriter) (agentapi.VMConfig, error) {
	var cfg agentapi.VMConfig
	if _, err := io.WriteString(rw, agentapi.ReadyLine+"\n"); err != nil {
		return cfg, fmt.Errorf("config channel: write ready: %w", err)
	}
	line, err := bufio.NewReader(rw).ReadBytes('\n')
	if err != nil && !(errors.Is(err, io.EOF) && len(line) > 0) {
		return cfg, fmt.Errorf("config channel: read config: %w", err)
	}
	if err := json.Unmarshal(line, &cfg); err != nil {
		return cfg, fmt.Errorf("config channel: decode config: %w", err)
	}
	if err := cfg.Metadata.Validate(); err != nil {
		return cfg, fmt.Errorf("config channel: %w", err)
	}
	return cfg, nil
}

// configFromCmdline is the second path, for VMs without a config port
// (Firecracker): metadata on the kernel command line, no clock or entropy.
func configFromCmdline(procCmdline string) (agentapi.VMConfig, error) {
	b, err := os.ReadFile(procCmdline)
	if err != nil {
		return agentapi.VMConfig{}, fmt.Errorf("kernel command line: %w", err)
	}
	m, err := agentapi.FromKernelArgs(string(b))
	if err != nil {
		return agentapi.VMConfig{}, fmt.Errorf("kernel command line: %w", err)
	}
	return agentapi.VMConfig{Metadata: m}, nil
}

// eofRetry reads from a virtio-serial port, where a read returns EOF while
// no host is connected: before the host has connected (when it dials QEMU
// rather than listens) or after it hung up with data still on its way. Such
// an EOF means "not yet", so it polls until data comes or ctx ends.
type eofRetry struct {
	ctx context.Context
	r   io.Reader
}

func (e eofRetry) Read(p []byte) (int, error) {
	for {
		n, err := e.r.Read(p)
		if n > 0 || !errors.Is(err, io.EOF) {
			return n, err
		}
		select {
		case <-e.ctx.Done():
			return 0, io.EOF
		case <-time.After(pollEvery):
		}
	}
}

type readWriter struct {
	io.Reader
	io.Writer
}

// portConn is an opened virtio-serial port read through eofRetry.
type portConn struct {
	readWriter
	io.Closer
}
