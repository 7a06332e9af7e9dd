package cli

import (
	"context"
	"os"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
)

// AgentCmd runs the agent of a process sandbox: the node starts `nex agent`
// with the sandbox's metadata in the environment and the work dir as cwd.
type AgentCmd struct{}

func (c *AgentCmd) Run(ctx context.Context, g *Globals) error {
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
		Log:     g.Log().With("sandbox", meta.SandboxID),
		WorkDir: wd,
	})
}
