// Package nettest holds network stand-ins shared by tests.
package nettest

import (
	"io"
	"net"
	"testing"
)

// ReplyServer listens on network/addr and answers each connection, once it
// has read all of it (until the other side's half-close), with prefix and
// what it read. It closes when the test ends.
func ReplyServer(t testing.TB, network, addr, prefix string) net.Listener {
	t.Helper()
	return serve(t, network, addr, func(c net.Conn) {
		b, _ := io.ReadAll(c)
		c.Write(append([]byte(prefix), b...))
	})
}

// EchoServer listens on TCP loopback and writes back what each connection
// sends, as it comes. It closes when the test ends.
func EchoServer(t testing.TB) net.Listener {
	t.Helper()
	return serve(t, "tcp", "127.0.0.1:0", func(c net.Conn) { io.Copy(c, c) })
}

// serve runs handle on each connection to network/addr, then closes it.
func serve(t testing.TB, network, addr string, handle func(net.Conn)) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln
}
