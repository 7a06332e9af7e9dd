package qemu

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/nettest"
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

// stdioPair is a unix socket pair as QEMU makes one for a forward
// command: the guest's end, and the command's stdin/stdout.
func stdioPair(t *testing.T) (guest, stdio net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int, name string) net.Conn {
		f := os.NewFile(uintptr(fd), name)
		defer f.Close() // FileConn holds its own copy
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0], "guest"), conn(fds[1], "stdio")
}
