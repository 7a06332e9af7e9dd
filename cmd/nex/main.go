// Command nex is the NATS Execution Engine: CLI, node and agent in one binary.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/nex-engine/nex/internal/agent/vminit"
	"github.com/nex-engine/nex/internal/cli"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

func main() {
	if vminit.Wanted() { // PID 1 of a microVM, or the agent it runs
		vminit.Main() // never returns
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// The agent of a process sandbox skips the CLI parser: every idle
	// sandbox pays for what its agent touches at start.
	if len(os.Args) == 2 && os.Args[1] == "agent" {
		os.Exit(cli.RunAgent(ctx, os.Stderr))
	}
	// So does the per-connection forward QEMU runs for a guest: a VM's
	// every NATS connection waits for it to start.
	if len(os.Args) == 3 && os.Args[1] == qemu.ForwardSubcommand {
		_ = qemu.ForwardStdio(ctx, os.Args[2])
		os.Exit(0)
	}
	os.Exit(cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr))
}
