package splice

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection (TCP, so half
// closes are real).
func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		got <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-got
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// A client's half close reaches the server, whose answer still flows back.
func TestConnsPassesHalfCloseAndKeepsTheOtherWay(t *testing.T) {
	client, a := pair(t)
	b, server := pair(t)
	done := make(chan struct{})
	go func() { Conns(context.Background(), a, b); close(done) }()

	if _, err := client.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	if err := client.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(server)
	if err != nil || string(got) != "ping" {
		t.Fatalf("server read %q, %v", got, err)
	}
	if _, err := server.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	server.Close()
	back, err := io.ReadAll(client)
	if err != nil || string(back) != "pong" {
		t.Fatalf("client read %q, %v", back, err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Conns did not return after both directions ended")
	}
}

// Ending ctx ends the splice and closes both connections.
func TestConnsEndsWithContext(t *testing.T) {
	_, a := pair(t)
	b, _ := pair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Conns(ctx, a, b); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Conns did not return after ctx ended")
	}
	if _, err := a.Write([]byte("x")); err == nil {
		t.Fatal("a still open")
	}
}
