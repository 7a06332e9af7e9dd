package vminit

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"

	"github.com/nex-engine/nex/internal/splice"
)

// forward accepts connections on ln and splices each to a connection made
// by dial, until ctx ends or ln is closed. Workloads in the guest find NATS
// on ln (127.0.0.1:4222); dial reaches the node (a stream on the NATS port
// under QEMU, vsock on Firecracker; nodeDialers).
func forward(ctx context.Context, ln net.Listener, dial func(context.Context) (net.Conn, error), log *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			up, err := dial(ctx)
			if err != nil {
				log.Warn("nats forward: dial node", keyError, err)
				return
			}
			splice.Conns(ctx, c, up) // closes both
		}()
	}
}
