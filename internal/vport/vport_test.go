package vport

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/nettest"
)

// upstream is a node's NATS stand-in: it answers each connection with
// what it read, once the client has finished writing (half-close).
func upstream(t *testing.T) string {
	return nettest.ReplyServer(t, "tcp", "127.0.0.1:0", "got ").Addr().String()
}

func serve(t *testing.T, dial func(context.Context) (net.Conn, error)) (*Dialer, net.Conn, chan error) {
	t.Helper()
	guest, host := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- Serve(context.Background(), host, dial, slog.New(slog.DiscardHandler)) }()
	d, err := NewDialer(guest)
	if err != nil {
		t.Fatal(err)
	}
	return d, host, done
}

func tcpTo(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// Streams run side by side, each spliced to a connection of its own, and a
// stream's close reaches the node as the end of its writes while the
// answer still comes back.
func TestStreamsAreConnections(t *testing.T) {
	d, _, done := serve(t, tcpTo(upstream(t)))
	var wg sync.WaitGroup
	for _, msg := range []string{"one", "two", "three"} {
		wg.Go(func() {
			c, err := d.Dial("tcp", "ignored:4222")
			if err != nil {
				t.Error(err)
				return
			}
			c.Write([]byte(msg))
			c.Close() // half-close: yamux's FIN
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c)
			if err != nil || string(b) != "got "+msg {
				t.Errorf("%s: read %q, %v", msg, b, err)
			}
		})
	}
	wg.Wait()
	d.Close()
	if err := <-done; err != nil {
		t.Fatalf("Serve after the guest closed the port: %v", err)
	}
}

// A stream whose node connection cannot be made is closed, so the guest's
// client sees the connection end and retries; the session goes on.
func TestDialFailureClosesTheStream(t *testing.T) {
	fail := true
	var mu sync.Mutex
	addr := upstream(t)
	d, host, done := serve(t, func(ctx context.Context) (net.Conn, error) {
		mu.Lock()
		defer mu.Unlock()
		if fail {
			fail = false
			return nil, errors.New("node down")
		}
		return tcpTo(addr)(ctx)
	})
	c, err := d.Dial("", "")
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("a stream with no node: read %q, %v; want EOF", b, err)
	}
	c, err = d.Dial("", "")
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("again"))
	c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(c); err != nil || string(b) != "got again" {
		t.Fatalf("retry: read %q, %v", b, err)
	}
	// The VM ends: its end of the port closes, and Serve returns.
	host.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return when the port closed")
	}
}

// A guest that writes something other than yamux on the port ends its
// session with an error the host logs.
func TestGarbageOnThePort(t *testing.T) {
	guest, host := net.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Serve(context.Background(), host, tcpTo("127.0.0.1:1"), slog.New(slog.DiscardHandler))
	}()
	go guest.Write([]byte("CONNECT {}\r\nPING\r\n"))
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Serve took garbage as the end of the port")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	guest.Close()
}
