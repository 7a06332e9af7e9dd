package vminit

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"time"

	"github.com/mdlayher/vsock"
	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/vport"
)

// nodeDial is how the guest's workloads reach the node's NATS at natsURL:
// over vsock when the URL is a vsock URL (Firecracker: vsock://2:4222, which
// the host side turns into a connection to the node's NATS), else over TCP
// to the URL's host:port (QEMU's guestfwd). The NATS port's URL
// (agentapi.NATSPortURL) is the agent's alone: with it, workloads go
// through QEMU's guestfwd at agentapi.GuestNATSAddr.
func nodeDial(natsURL string) (func(ctx context.Context) (net.Conn, error), error) {
	if agentapi.IsPortURL(natsURL) {
		natsURL = "nats://" + agentapi.GuestNATSAddr
	}
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

// natsDialer gives the agent's NATS client the NATS port when the URL names
// it (QEMU), opened with openPort, or the vsock when the node is behind one
// (Firecracker); nil (nats.go's own TCP dialer) otherwise.
func natsDialer(natsURL string, openPort func(name string) (io.ReadWriteCloser, error)) (nats.CustomDialer, error) {
	if agentapi.IsPortURL(natsURL) {
		if natsURL != agentapi.NATSPortURL {
			return nil, fmt.Errorf("nats url %q: want %s", natsURL, agentapi.NATSPortURL)
		}
		port, err := openPort(agentapi.NATSPortName)
		if err != nil {
			return nil, fmt.Errorf("nats port: %w", err)
		}
		d, err := vport.NewDialer(port)
		if err != nil {
			port.Close()
			return nil, fmt.Errorf("nats port: %w", err)
		}
		return d, nil
	}
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
