package node

import (
	"log/slog"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/preflight"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/firecracker"
)

// newFirecrackerDriver runs sandboxes as Firecracker microVMs booted from the
// guest image the preflight found (or the config names). NewDriver has run
// the firecracker preflight (binary, KVM, image) before it gets here.
func newFirecrackerDriver(cfg *config.Config, opts preflight.Options, log *slog.Logger) (sandbox.Driver, error) {
	kernel, initrd := opts.Image()
	return firecracker.New(firecracker.Config{
		Binary: cfg.FirecrackerBinary,
		Kernel: kernel,
		Initrd: initrd,
		Log:    log,
	})
}
