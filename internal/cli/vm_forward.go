package cli

import (
	"context"

	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

// VMForwardCmd is the host end of one guest connection to the node's NATS:
// QEMU runs it with the connection as stdin and stdout (see
// internal/sandbox/qemu/forward.go). A pass:path target is the driver's
// forward server, which takes the connection from it; a unix:/path target
// is a unix socket, such as the "<uds>_<port>" socket of a Firecracker
// vsock's host side.
type VMForwardCmd struct {
	Addr string `arg:"" help:"pass:path of the driver's forward socket, host:port of the node's internal NATS, or unix:/path of a unix socket"`
}

// Run never reports an error: stderr is the guest's connection too, so a
// failed dial just closes it, which the guest sees as a refused connection.
func (c *VMForwardCmd) Run(ctx context.Context) error {
	_ = qemu.ForwardStdio(ctx, c.Addr)
	return nil
}
