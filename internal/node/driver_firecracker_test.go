package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/preflight"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/firecracker"
	"github.com/nex-engine/nex/internal/sandbox/firecracker/fctest"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestFirecrackerDriverFromConfig: the driver gets the VMM from the config
// and the guest image from the preflight options. fctest's server stands in
// for the binary; its preflight answers with its version.
func TestFirecrackerDriverFromConfig(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd.cpio")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{Sandbox: config.SandboxFirecracker, FirecrackerBinary: sandboxtest.BuildPackage(t, "fcserver", fctest.ServerPackage)}
	opts := preflight.OptionsFromConfig(cfg)
	opts.Kernel, opts.Initrd = kernel, initrd
	d, err := newFirecrackerDriver(cfg, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if d.Name() != "firecracker" || sandbox.IsUnsafe(d) {
		t.Fatalf("driver %s (unsafe %v)", d.Name(), sandbox.IsUnsafe(d))
	}
	checks := d.(sandbox.Preflighter).Preflight(context.Background())
	for _, c := range checks {
		switch c.Name {
		case firecracker.CheckBinary:
			if !c.OK || !strings.Contains(c.Info, cfg.FirecrackerBinary) {
				t.Errorf("binary check %+v; want the configured binary", c)
			}
		case firecracker.CheckKernel, firecracker.CheckInitrd:
			if !c.OK || (!strings.Contains(c.Info, kernel) && !strings.Contains(c.Info, initrd)) {
				t.Errorf("%s check %+v; want the image from the options", c.Name, c)
			}
		}
	}
}

// TestNewDriverFirecrackerRefuses: without its binary a firecracker node
// refuses to start with the preflight's report, fix included.
func TestNewDriverFirecrackerRefuses(t *testing.T) {
	cfg := &config.Config{
		Sandbox:           config.SandboxFirecracker,
		DataDir:           t.TempDir(),
		FirecrackerBinary: filepath.Join(t.TempDir(), "firecracker"),
	}
	_, err := NewDriver(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if !errors.Is(err, preflight.ErrFailed) || !strings.Contains(err.Error(), "firecracker") ||
		!strings.Contains(err.Error(), "release archive") {
		t.Fatalf("NewDriver = %v; want a failed preflight naming the firecracker binary and its fix", err)
	}
}
