package vminit

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
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
	if d, err := natsDialer("nats://" + ln.Addr().String()); err != nil || d != nil {
		t.Fatalf("natsDialer for a TCP url = %v, %v; want nil (nats.go dials itself)", d, err)
	}
}

func TestNodeDialVsock(t *testing.T) {
	if _, err := nodeDial("vsock://2:4222"); err != nil {
		t.Fatal(err)
	}
	d, err := natsDialer("vsock://2:4222")
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
		if _, err := natsDialer(bad); err == nil {
			t.Errorf("natsDialer(%q) accepted it", bad)
		}
	}
	if _, err := nodeDial("nats://"); err == nil {
		t.Error("nodeDial accepted a url without host:port")
	}
}
