package cli

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/preflight"
)

// NodePreflightCmd checks what `nex node up` needs from this host, one line
// per check with the exact fix, and with --yes runs the fixes it can. It
// exits 0 only when a node with that sandbox will start.
type NodePreflightCmd struct {
	Config  string `name:"config" help:"node configuration file (JSON)" type:"path"`
	Sandbox string `name:"sandbox" help:"sandbox to check: qemu, firecracker, process (default: the config's, auto checks qemu)" enum:",auto,qemu,firecracker,process" default:""`
	DataDir string `name:"data-dir" help:"override data_dir of the config" type:"path"`
	Yes     bool   `name:"yes" short:"y" help:"run the fixes that can be run (apt-get install qemu-system-x86, build the guest image)"`
}

// preflightFailed carries exit code 1 without repeating the report.
type preflightFailed struct{ err error }

func (e preflightFailed) Error() string { return e.err.Error() }
func (e preflightFailed) Unwrap() error { return e.err }
func (e preflightFailed) ExitCode() int { return 1 }

func (c *NodePreflightCmd) Run(ctx context.Context, g *Globals) error {
	cfg, err := config.Load(c.Config)
	if err != nil {
		return err
	}
	if c.DataDir != "" {
		if cfg.StateDir == filepath.Join(cfg.DataDir, "state") {
			cfg.StateDir = filepath.Join(c.DataDir, "state")
		}
		cfg.DataDir = c.DataDir
	}
	if c.Sandbox != "" {
		cfg.Sandbox = c.Sandbox
	}
	o := preflight.OptionsFromConfig(cfg)
	o.Log = g.Log()
	checks := preflight.Checks(o)
	out := g.Stdout()
	fmt.Fprintf(out, "preflight for sandbox %s (data dir %s)\n", cfg.Sandbox, cfg.DataDir)
	var r preflight.Report
	if c.Yes {
		r = preflight.RunAndFix(ctx, checks, out)
	} else {
		r = preflight.Run(ctx, checks)
	}
	r.Print(out)
	switch {
	case r.OK():
		fmt.Fprintf(out, "ready: nex node up --sandbox %s will start\n", cfg.Sandbox)
		if !c.Yes && r.Fixable(checks) {
			fmt.Fprintln(out, "run again with --yes to apply the fixes for the warnings above")
		}
		return nil
	case cfg.Sandbox == config.SandboxAuto:
		// auto falls back to the process sandbox; the node still starts.
		fmt.Fprintln(out, "auto: the qemu sandbox is not usable here; nex node up will use the process sandbox (no isolation)")
		return nil
	case !c.Yes && r.Fixable(checks):
		fmt.Fprintln(out, "run again with --yes to apply the fixes that can be run")
	}
	return preflightFailed{r.Err()}
}
