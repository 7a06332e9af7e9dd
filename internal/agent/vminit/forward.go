package vminit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

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

// rehearseForward runs a workload's first steps through the forwarder at
// addr once, for the agent's rehearsal (agent/rehearse.go): a connection
// to it, which the forwarder splices to a new one to the node's NATS,
// whose INFO line it reads. Then it hangs up: it never sends CONNECT, so
// the node's NATS sees a client that left before it logged in.
func rehearseForward(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "INFO ") {
		return fmt.Errorf("the node's NATS said %q, not INFO", strings.TrimSpace(line))
	}
	return nil
}
