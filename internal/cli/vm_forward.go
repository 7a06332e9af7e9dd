package cli

import (
	"context"

	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

// VMForwardCmd is the host end of one guest connection to the node's NATS:
// QEMU runs it with the connection as stdin and stdout (see
// internal/sandbox/qemu/forward.go).
type VMForwardCmd struct {
	Addr string `arg:"" help:"host:port of the node's internal NATS"`
}

// Run never reports an error: stderr is the guest's connection too, so a
// failed dial just closes it, which the guest sees as a refused connection.
func (c *VMForwardCmd) Run(ctx context.Context) error {
	_ = qemu.ForwardStdio(ctx, c.Addr)
	return nil
}
