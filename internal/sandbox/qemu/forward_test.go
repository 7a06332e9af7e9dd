package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/nettest"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestForward splices a unix socketpair end (what QEMU hands the forward
// command as stdin/stdout) to a TCP server, and checks both directions and
// the half-close: the server sees EOF after the guest side ends its writes
// and can still answer.
func TestForward(t *testing.T) {
	ln := nettest.ReplyServer(t, "tcp", "127.0.0.1:0", "got ")

	guest, stdio := stdioPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Forward(ctx, ln.Addr().String(), stdio) }()

	if _, err := guest.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	guest.(*net.UnixConn).CloseWrite()
	reply, err := io.ReadAll(bufio.NewReader(guest))
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "got hello" {
		t.Fatalf("reply %q, want %q", reply, "got hello")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestForwardRefused(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	a, b := net.Pipe()
	defer a.Close()
	if err := Forward(context.Background(), addr, b); err == nil {
		t.Fatal("Forward to a closed port succeeded")
	}
}

// TestForwardUnix splices to a unix socket named unix:/path, the target the
// Firecracker test server gives for a guest's vsock connections.
func TestForwardUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "v.sock_4222")
	nettest.ReplyServer(t, "unix", sock, "unix got ")
	guest, stdio := stdioPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- Forward(ctx, UnixPrefix+sock, stdio) }()
	if _, err := guest.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	guest.(*net.UnixConn).CloseWrite()
	reply, err := io.ReadAll(guest)
	if err != nil {
		t.Fatal(err)
	}
	if string(reply) != "unix got hello" {
		t.Fatalf("reply %q, want %q", reply, "unix got hello")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestGuestForward(t *testing.T) {
	got := GuestForward("10.0.2.100:4222", []string{"/opt/a,b/nex", "vm-forward"}, "unix:/run/x/v.sock_4222")
	want := "guestfwd=tcp:10.0.2.100:4222-cmd:'/opt/a,,b/nex' 'vm-forward' 'unix:/run/x/v.sock_4222'"
	if got != want {
		t.Fatalf("GuestForward =\n %s\nwant\n %s", got, want)
	}
}

// TestForwardPass hands a guest connection over a forward server's socket,
// as `nex vm-forward pass:fwd.sock` does, and checks that the server splices
// it to the upstream both ways (with the half-close) after the handing
// process has let go of its copy; and that a connection whose upstream is
// down is closed, not left hanging.
func TestForwardPass(t *testing.T) {
	up := nettest.ReplyServer(t, "tcp", "127.0.0.1:0", "got ")
	dir := t.TempDir()
	servers := 0
	serve := func(upstream string) string {
		servers++
		sock := filepath.Join(dir, fmt.Sprintf("fwd%d.sock", servers))
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveForwards(ln, dialTCP(upstream), sandboxtest.Log(t))
		return sock
	}
	// pass plays QEMU and the forward command: a socket pair, one end
	// handed over and closed here.
	pass := func(sock string) net.Conn {
		guest, stdio := socketPair(t)
		if err := passConn(context.Background(), sock, stdio); err != nil {
			t.Fatal(err)
		}
		stdio.Close()
		guest.SetDeadline(time.Now().Add(10 * time.Second))
		return guest
	}

	sock := serve(up.Addr().String())
	notSocket, err := os.Open(filepath.Join(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer notSocket.Close()
	if err := passConn(context.Background(), sock, notSocket); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("passing a directory: %v; want a refusal", err)
	}
	for i := range 3 {
		guest := pass(sock)
		msg := fmt.Sprintf("hello %d", i)
		if _, err := guest.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		guest.(*net.UnixConn).CloseWrite()
		reply, err := io.ReadAll(guest)
		guest.Close()
		if err != nil || string(reply) != "got "+msg {
			t.Fatalf("reply %q, %v; want %q", reply, err, "got "+msg)
		}
	}

	down, _ := net.Listen("tcp", "127.0.0.1:0")
	downAddr := down.Addr().String()
	down.Close()
	guest := pass(serve(downAddr))
	defer guest.Close()
	if b, err := io.ReadAll(guest); err != nil || len(b) != 0 {
		t.Fatalf("with the upstream down the guest read %q, %v; want the connection closed", b, err)
	}
}

// socketPair is what QEMU gives a forward command: a connected unix socket
// pair, the guest's end and the command's stdin/stdout.
func socketPair(t *testing.T) (guest net.Conn, stdio *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	guest, err = net.FileConn(os.NewFile(uintptr(fds[0]), "guest"))
	if err != nil {
		t.Fatal(err)
	}
	return guest, os.NewFile(uintptr(fds[1]), "stdio")
}

// stdioPair is socketPair with the command's end as a connection.
func stdioPair(t *testing.T) (guest, stdio net.Conn) {
	t.Helper()
	guest, f := socketPair(t)
	defer f.Close()
	stdio, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	return guest, stdio
}
