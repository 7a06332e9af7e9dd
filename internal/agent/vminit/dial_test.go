package vminit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/nettest"
	"github.com/nex-engine/nex/internal/vport"
)

// The vsock path itself cannot run here (no vsock to a host that listens:
// it runs only in a Firecracker guest); these tests pin which path a URL
// takes and the TCP one end to end.

func TestNodeDialTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	dial, err := nodeDial("nats://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q, %v", b, err)
	}
	if d, err := natsDialer("nats://"+ln.Addr().String(), noPort(t)); err != nil || d != nil {
		t.Fatalf("natsDialer for a TCP url = %v, %v; want nil (nats.go dials itself)", d, err)
	}
}

func TestNodeDialVsock(t *testing.T) {
	if _, err := nodeDial("vsock://2:4222"); err != nil {
		t.Fatal(err)
	}
	d, err := natsDialer("vsock://2:4222", noPort(t))
	if err != nil || d == nil {
		t.Fatalf("natsDialer = %v, %v; want the vsock dialer", d, err)
	}
	if vd, ok := d.(*vsockDialer); !ok || vd.addr.CID != 2 || vd.addr.Port != 4222 {
		t.Fatalf("dialer %#v; want vsock 2:4222", d)
	}
	for _, bad := range []string{"vsock://2", "vsock://host:4222"} {
		if _, err := nodeDial(bad); err == nil || !strings.Contains(err.Error(), "vsock url") {
			t.Errorf("nodeDial(%q) = %v; want a vsock url error", bad, err)
		}
		if _, err := natsDialer(bad, noPort(t)); err == nil {
			t.Errorf("natsDialer(%q) accepted it", bad)
		}
	}
	if _, err := nodeDial("nats://"); err == nil {
		t.Error("nodeDial accepted a url without host:port")
	}
}

func noPort(t *testing.T) func(string) (io.ReadWriteCloser, error) {
	return func(name string) (io.ReadWriteCloser, error) {
		t.Errorf("port %s opened for a url that does not name it", name)
		return nil, errors.New("no port")
	}
}

// The NATS port's URL makes the agent dial streams on the port, which the
// host's vport.Serve splices to the node; the workloads' forwarder then
// goes through QEMU's guestfwd.
func TestNATSDialerOverPort(t *testing.T) {
	node := nettest.EchoServer(t)
	guestEnd, hostEnd := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- vport.Serve(ctx, hostEnd, func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", node.Addr().String())
		}, slog.New(slog.DiscardHandler))
	}()
	var opened string
	d, err := natsDialer(agentapi.NATSPortURL, func(name string) (io.ReadWriteCloser, error) {
		opened = name
		return guestEnd, nil
	})
	if err != nil || opened != agentapi.NATSPortName {
		t.Fatalf("natsDialer = %v, %v (opened %q)", d, err, opened)
	}
	for i := range 2 { // a reconnect is a new stream, not the old bytes
		c, err := d.Dial("tcp", "nex.nats:4222")
		if err != nil {
			t.Fatal(err)
		}
		msg := fmt.Sprintf("PING %d\r\n", i)
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("stream %d read %q, %v", i, b, err)
		}
		c.Close()
	}
	d.(*vport.Dialer).Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}

	if _, err := natsDialer(agentapi.PortScheme+"://other:4222", noPort(t)); err == nil {
		t.Error("a port url naming another port was taken")
	}
	if _, err := natsDialer(agentapi.NATSPortURL, func(string) (io.ReadWriteCloser, error) {
		return nil, errors.New("no such port")
	}); err == nil || !strings.Contains(err.Error(), "no such port") {
		t.Errorf("a missing port: err = %v", err)
	}
	// Workloads are forwarded through the guestfwd.
	if _, err := nodeDial(agentapi.NATSPortURL); err != nil {
		t.Fatal(err)
	}
}
