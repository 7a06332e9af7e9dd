package node

import (
	"errors"
	"log/slog"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/preflight"
	"github.com/nex-engine/nex/internal/sandbox"
)

func newFirecrackerDriver(cfg *config.Config, opts preflight.Options, log *slog.Logger) (sandbox.Driver, error) {
	return nil, errors.New("sandbox firecracker: driver not built yet")
}
