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
				b, _ := io.ReadAll(c)
				c.Write(append([]byte(prefix), b...))
			}()
		}
	}()
	return ln
}
