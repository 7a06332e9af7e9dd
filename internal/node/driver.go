package node

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/preflight"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

// NewDriver makes the sandbox driver the config asks for. A VM driver whose
// preflight fails refuses with the preflight's own report; "auto" takes qemu
// when its preflight passes and otherwise the process driver, saying why.
func NewDriver(ctx context.Context, cfg *config.Config, log *slog.Logger) (sandbox.Driver, error) {
	switch cfg.Sandbox {
	case config.SandboxProcess:
		return newProcessDriver(log)
	case config.SandboxQEMU, config.SandboxFirecracker:
		opts := preflight.OptionsFromConfig(cfg)
		report := preflight.Run(ctx, preflight.Checks(opts))
		if err := report.Err(); err != nil {
			return nil, fmt.Errorf("sandbox %s: %w", cfg.Sandbox, err)
		}
		logWarnings(log, report)
		if cfg.Sandbox == config.SandboxFirecracker {
			return newFirecrackerDriver(cfg, opts, log)
		}
		return qemu.New(opts.QEMUConfig(log))
	default: // auto
		opts := preflight.OptionsFromConfig(cfg)
		opts.Sandbox = config.SandboxQEMU
		report := preflight.Run(ctx, preflight.Checks(opts))
		if err := report.Err(); err != nil {
			log.Info("sandbox auto: using the process driver (no isolation, nex.unsafe=true); the qemu preflight failed — run `nex node preflight --sandbox qemu` for the fixes",
				"reason", err.Error())
			return newProcessDriver(log)
		}
		log.Info("sandbox auto: qemu preflight passed; using microVMs")
		logWarnings(log, report)
		return qemu.New(opts.QEMUConfig(log))
	}
}

// logWarnings logs what a passed preflight found worth acting on.
func logWarnings(log *slog.Logger, r preflight.Report) {
	for _, c := range r.Warnings() {
		log.Warn("Preflight: "+c.Name, "found", c.Info, "fix", c.Fix)
	}
}
