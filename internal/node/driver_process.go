package node

import (
	"errors"
	"log/slog"

	"github.com/nex-engine/nex/internal/sandbox"
)

func newProcessDriver(log *slog.Logger) (sandbox.Driver, error) {
	return nil, errors.New("process driver not wired yet")
}
