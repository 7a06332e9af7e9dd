// Package splice joins two connections: the one copy loop behind every
// forward of nex (the guest's NATS forwarder, `nex vm-forward`, the
// Firecracker vsock proxy).
package splice

import (
	"context"
	"io"
	"net"
	"sync"
)

// Conns copies both ways between a and b. When one side ends its writes,
// the other side's write half is closed, so its peer sees EOF while the
// other direction may still flow. It returns when both directions are done
// or ctx ends, with both connections closed.
func Conns(ctx context.Context, a, b net.Conn) {
	stop := context.AfterFunc(ctx, func() { a.Close(); b.Close() })
	defer stop()
	var wg sync.WaitGroup
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go half(a, b)
	go half(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
