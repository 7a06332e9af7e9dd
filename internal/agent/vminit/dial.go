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
	"github.com/nex-engine/nex/internal/vport"
)

// nodeDialers is how the guest reaches the node's NATS at natsURL: agent is
// the agent's client's dialer (nil: nats.go's own TCP dialing), workloads
// is what PID 1's forwarder dials for each workload connection.
//   - The NATS port's URL (agentapi.NATSPortURL, QEMU, whose guests have
//     no network device): every connection, the agent's and the
//     workloads', is a stream of one session on the port, which natsPort
//     gives; the host splices each stream to the node's NATS.
//   - A vsock URL (Firecracker: vsock://2:4222, which the host side turns
//     into a connection to the node's NATS).
//   - Else TCP to the URL's host:port.
func nodeDialers(natsURL string, natsPort func() (*vport.Dialer, error)) (agent nats.CustomDialer, workloads func(ctx context.Context) (net.Conn, error), err error) {
	if agentapi.IsPortURL(natsURL) {
		if natsURL != agentapi.NATSPortURL {
			return nil, nil, fmt.Errorf("nats url %q: want %s", natsURL, agentapi.NATSPortURL)
		}
		d, err := natsPort()
		if err != nil {
			return nil, nil, fmt.Errorf("nats port: %w", err)
		}
		return d, func(context.Context) (net.Conn, error) { return d.Dial("", "") }, nil
	}
	a, isVsock, err := agentapi.ParseVsockURL(natsURL)
	if err != nil {
		return nil, nil, err
	}
	if isVsock {
		return &vsockDialer{addr: a}, func(ctx context.Context) (net.Conn, error) { return dialVsock(ctx, a) }, nil
	}
	u, err := url.Parse(natsURL)
	if err != nil || u.Host == "" {
		return nil, nil, fmt.Errorf("nats url %q: no host:port", natsURL)
	}
	var d net.Dialer
	return nil, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", u.Host) }, nil
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
