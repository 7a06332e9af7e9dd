// Package vport carries NATS connections over one virtio-serial port. A
// port is a single byte stream that never ends while its VM runs, with no
// connection boundaries: a NATS client that reconnected over the bare port
// would read the rest of its old connection. So each connection is a yamux
// stream on the port: the guest opens one per dial, and the host splices
// each stream it accepts to a connection of its own to the node's NATS.
package vport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"

	"github.com/hashicorp/yamux"

	"github.com/nex-engine/nex/internal/splice"
)

// config is both sides' session configuration. There is no keepalive: the
// port lives as long as the VM, and a snapshot template's guest would carry
// a half-done ping into every clone, whose host session never sent it.
func config() *yamux.Config {
	c := yamux.DefaultConfig()
	c.EnableKeepAlive = false
	c.LogOutput = io.Discard
	return c
}

// Dialer is the guest's side: every Dial is a new stream on the port.
// A snapshot template opens it before it is saved, so its clones dial at
// once.
type Dialer struct {
	s *yamux.Session
}

// NewDialer starts the guest's session on port, the opened port device.
func NewDialer(port io.ReadWriteCloser) (*Dialer, error) {
	s, err := yamux.Client(port, config())
	if err != nil {
		return nil, err
	}
	return &Dialer{s: s}, nil
}

// Dial opens a stream; the network and address (what nats.go asks for)
// are the port's to decide, not the caller's.
func (d *Dialer) Dial(_, _ string) (net.Conn, error) { return d.s.OpenStream() }

// Close ends the session and closes the port.
func (d *Dialer) Close() error { return d.s.Close() }

// Serve is the host's side of a port whose guest end speaks through a
// Dialer: each stream the guest opens is spliced to a connection dial
// makes. A stream whose dial fails is closed, so the guest's client
// retries. Serve returns when conn ends (the VM stopped) or ctx does, with
// every spliced connection closed.
func Serve(ctx context.Context, conn io.ReadWriteCloser, dial func(context.Context) (net.Conn, error), log *slog.Logger) error {
	s, err := yamux.Server(conn, config())
	if err != nil {
		conn.Close()
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		cancel() // ends the splices
		wg.Wait()
	}()
	for {
		st, err := s.AcceptStream()
		if err != nil {
			if ctx.Err() != nil || ended(err) {
				return nil
			}
			return err // the guest spoke something other than yamux
		}
		wg.Go(func() {
			up, err := dial(ctx)
			if err != nil {
				log.Warn("Guest NATS connection: dial the node's NATS", "error", err)
				st.Close()
				return
			}
			splice.Conns(ctx, st, up)
		})
	}
}

// ended tells an error that means the port is gone (the VM stopped, or
// the session was closed) from one in what the guest sent.
func ended(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, yamux.ErrSessionShutdown) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrClosedPipe) ||
		errors.Is(err, syscall.ECONNRESET) // QEMU killed
}
