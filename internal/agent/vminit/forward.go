package vminit

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
)

// forward accepts connections on ln and splices each to a connection made
// by dial, until ctx ends or ln is closed. Workloads in the guest find NATS
// on ln (127.0.0.1:4222); dial reaches the node (through QEMU's guestfwd,
// or vsock on Firecracker).
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
			defer up.Close()
			splice(ctx, c, up)
		}()
	}
}

// splice copies both ways; when one side ends its writes, the other side's
// write half is closed so the peer sees EOF, and both are done when both
// directions are.
func splice(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	go half(a, b)
	go half(b, a)
	wg.Wait()
}
