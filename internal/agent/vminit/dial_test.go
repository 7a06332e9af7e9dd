package vminit

import (
	"context"
	"errors"
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
	agentDial, dial, err := nodeDialers("nats://"+ln.Addr().String(), noPort(t))
	if err != nil {
		t.Fatal(err)
	}
	if agentDial != nil {
		t.Fatalf("agent's dialer for a TCP url = %v; want nil (nats.go dials itself)", agentDial)
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
}

func TestNodeDialVsock(t *testing.T) {
	d, workloads, err := nodeDialers("vsock://2:4222", noPort(t))
	if err != nil || d == nil || workloads == nil {
		t.Fatalf("nodeDialers = %v, %v; want the vsock dialers", d, err)
	}
	if vd, ok := d.(*vsockDialer); !ok || vd.addr.CID != 2 || vd.addr.Port != 4222 {
		t.Fatalf("dialer %#v; want vsock 2:4222", d)
	}
	for _, bad := range []string{"vsock://2", "vsock://host:4222"} {
		if _, _, err := nodeDialers(bad, noPort(t)); err == nil || !strings.Contains(err.Error(), "vsock url") {
			t.Errorf("nodeDialers(%q) = %v; want a vsock url error", bad, err)
		}
	}
	if _, _, err := nodeDialers("nats://", noPort(t)); err == nil {
		t.Error("nodeDialers accepted a url without host:port")
	}
}

func noPort(t *testing.T) func() (*vport.Dialer, error) {
	return func() (*vport.Dialer, error) {
		t.Error("the NATS port's session asked for by a url that does not name it")
		return nil, errors.New("no port")
	}
}

// The NATS port's URL makes the agent and the workloads' forwarder dial
// streams on one session over the port (opened once), which the host's
// vport.Serve splices to the node, each stream a connection of its own.
func TestNodeDialersOverPort(t *testing.T) {
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
	opened := 0
	d, workloads, err := nodeDialers(agentapi.NATSPortURL, func() (*vport.Dialer, error) {
		opened++
		return vport.NewDialer(guestEnd)
	})
	if err != nil || opened != 1 {
		t.Fatalf("nodeDialers = %v, %v (session asked for %d times)", d, err, opened)
	}
	echo := func(c net.Conn, msg string) {
		t.Helper()
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("read %q, %v; want %q", b, err, msg)
		}
	}
	// The agent's connection and a workload's side by side, then a
	// reconnect of the agent: a new stream, not the old bytes.
	agentConn, err := d.Dial("tcp", "nex.nats:4222")
	if err != nil {
		t.Fatal(err)
	}
	wl, err := workloads(ctx)
	if err != nil {
		t.Fatal(err)
	}
	echo(wl, "workload CONNECT\r\n")
	echo(agentConn, "agent PING\r\n")
	agentConn.Close()
	wl.Close()
	again, err := d.Dial("tcp", "nex.nats:4222")
	if err != nil {
		t.Fatal(err)
	}
	echo(again, "PING 2\r\n")
	again.Close()
	if opened != 1 {
		t.Fatalf("session asked for %d times; want once", opened)
	}
	d.(*vport.Dialer).Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}

	if _, _, err := nodeDialers(agentapi.PortScheme+"://other:4222", noPort(t)); err == nil {
		t.Error("a port url naming another port was taken")
	}
	if _, _, err := nodeDialers(agentapi.NATSPortURL, func() (*vport.Dialer, error) {
		return nil, errors.New("no such port")
	}); err == nil || !strings.Contains(err.Error(), "no such port") {
		t.Errorf("a missing port: err = %v", err)
	}
}
