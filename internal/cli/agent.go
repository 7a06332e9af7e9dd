package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
)

// AgentCmd runs the agent of a process sandbox: the node starts `nex agent`
// with the sandbox's metadata in the environment and the work dir as cwd.
type AgentCmd struct{}

func (c *AgentCmd) Run(ctx context.Context, g *Globals) error {
	return runAgent(ctx, g.Log())
}

// RunAgent is `nex agent` without the CLI parser (see cmd/nex); it returns
// the exit code.
func RunAgent(ctx context.Context, stderr io.Writer) int {
	if err := runAgent(ctx, slog.New(slog.NewTextHandler(stderr, nil))); err != nil {
		fmt.Fprintln(stderr, "nex agent:", err)
		return 1
	}
	return 0
}

func runAgent(ctx context.Context, log *slog.Logger) error {
	meta, err := agentapi.FromEnv(nil)
	if err != nil {
		return err
	}
	// The seed is needed once, to connect; nothing started later inherits it.
	_ = os.Unsetenv(agentapi.EnvSeed)
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	return agent.Run(ctx, agent.Options{
		Meta:    meta,
		Log:     log.With("sandbox", meta.SandboxID),
		WorkDir: wd,
	})
}
