package vminit

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
)

// nodeDial is how the guest reaches the node's NATS at natsURL: over vsock
// when the URL is a vsock URL (Firecracker: vsock://2:4222, which the host
// side turns into a connection to the node's NATS), else over TCP to the
// URL's host:port (QEMU's guestfwd).
func nodeDial(natsURL string) (func(ctx context.Context) (net.Conn, error), error) {
	a, isVsock, err := agentapi.ParseVsockURL(natsURL)
	if err != nil {
		return nil, err
	}
	if isVsock {
		return func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, a) }, nil
	}
	u, err := url.Parse(natsURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("nats url %q: no host:port", natsURL)
	}
	var d net.Dialer
	return func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", u.Host) }, nil
}

// natsDialer gives the agent's NATS client the vsock when the node is behind
// one; nil (nats.go's own TCP dialer) otherwise.
func natsDialer(natsURL string) (nats.CustomDialer, error) {
	a, isVsock, err := agentapi.ParseVsockURL(natsURL)
	if err != nil || !isVsock {
		return nil, err
	}
	return &vsockDialer{addr: a}, nil
}

// vsockDialTimeout bounds one connection attempt; nats.go retries.
const vsockDialTimeout = 5 * time.Second

// vsockDialer is a nats.CustomDialer that ignores the address nats.go asks
// for (the URL's "host" is a context id, not a name) and dials the vsock.
type vsockDialer struct{ addr agentapi.VsockAddr }

func (d *vsockDialer) Dial(_, _ string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), vsockDialTimeout)
	defer cancel()
	return dialVsock(ctx, d.addr)
}

func dialVsock(ctx context.Context, a agentapi.VsockAddr) (net.Conn, error) {
	c, err := vsock.DialContext(ctx, a.CID, a.Port, nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", a, err)
	}
	return c, nil
}
