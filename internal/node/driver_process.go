package node

import (
	"log/slog"

	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
)

// newProcessDriver runs agents as children of this executable (`nex agent`).
func newProcessDriver(log *slog.Logger) (sandbox.Driver, error) {
	return process.New(process.Config{Log: log})
}
