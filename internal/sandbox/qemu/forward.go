package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/nex-engine/nex/internal/splice"
)

// `nex vm-forward host:port` (or unix:/path) splices the connection QEMU
// hands it as stdin to addr, for a user-mode netdev's guestfwd with a
// command. The qemu driver's guests no longer use one (they reach the
// node's NATS over a virtio-serial port, internal/vport); the Firecracker
// test server does, to stand in for vsock.

// ForwardSubcommand is the nex subcommand that runs Forward.
const ForwardSubcommand = "vm-forward"

// UnixPrefix marks a forward target that is a unix socket ("unix:/path")
// rather than a TCP host:port: the Firecracker test server carries a
// guest's vsock connections to the "<uds>_<port>" socket its host listens on.
const UnixPrefix = "unix:"

// Forward splices one guest connection to addr (host:port, or unix:/path):
// conn is what QEMU handed the command as stdin and stdout (a unix socket).
// Nothing may be written to stderr, which QEMU points at the same socket.
func Forward(ctx context.Context, addr string, conn net.Conn) error {
	network, address := "tcp", addr
	if p, ok := strings.CutPrefix(addr, UnixPrefix); ok {
		network, address = "unix", p
	}
	var d net.Dialer
	up, err := d.DialContext(ctx, network, address)
	if err != nil {
		return fmt.Errorf("vm forward to %s: %w", addr, err)
	}
	splice.Conns(ctx, conn, up)
	return nil
}

// ForwardStdio runs Forward on the process's stdin, as QEMU starts it.
func ForwardStdio(ctx context.Context, addr string) error {
	conn, err := net.FileConn(os.Stdin)
	if err != nil {
		return fmt.Errorf("vm forward: stdin is not a socket: %w", err)
	}
	return Forward(ctx, addr, conn)
}

// GuestForward is the guestfwd option of a user-mode netdev that carries
// each guest connection to guestAddr (ip:port inside the guest) to target
// (host:port or unix:/path) through the forward command argv, escaped for
// QEMU's option parser.
func GuestForward(guestAddr string, argv []string, target string) string {
	words := make([]string, 0, len(argv)+1)
	for _, a := range append(slices.Clone(argv), target) {
		words = append(words, shellQuote(a))
	}
	return "guestfwd=tcp:" + guestAddr + "-" + qemuOptValue("cmd:"+strings.Join(words, " "))
}

// shellQuote quotes p for the /bin/sh that runs a guestfwd's cmd: (GuestForward).
func shellQuote(p string) string {
	return "'" + strings.ReplaceAll(p, "'", `'\''`) + "'"
}
