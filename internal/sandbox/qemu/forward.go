package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/splice"
)

// The guest's path to the node's NATS. QEMU's user-mode network offers two
// kinds of guestfwd: to a chardev, which QEMU connects once at start-up and
// which carries a single guest connection (a second one gets nothing, and a
// server that closes the first one — NATS does after its auth timeout —
// leaves the forward dead), or to a command, which QEMU runs for each guest
// connection with the connection as its stdin and stdout. The agent needs
// several connections (its own, and one per workload through its in-guest
// forwarder), and a reconnect after a restore, so the driver uses the
// command form and the command is nex itself (Config.Forwarder).
//
// The command does not stay to carry the connection: `nex vm-forward
// pass:fwd.sock` hands its stdin (the guest connection) to the driver over
// the VM's fwd.sock with SCM_RIGHTS and exits, and the node splices the
// connection to its NATS in-process (serveForwards). A forward process that
// stayed for the connection's life cost the host 14 MB of RSS per guest
// connection (one for the agent, one per workload), more than a fifth of
// an idle clone's own. `nex vm-forward host:port` (or unix:/path) still
// splices by itself; the Firecracker test server uses it.

// ForwardSubcommand is the nex subcommand that runs Forward.
const ForwardSubcommand = "vm-forward"

// defaultForwarder is the running executable's vm-forward subcommand: the
// node is the nex binary.
func defaultForwarder() ([]string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable for the guest's NATS forward: %w", err)
	}
	return []string{exe, ForwardSubcommand}, nil
}

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

// PassPrefix marks a forward target that is the unix socket of the
// driver's forward server ("pass:fwd.sock", relative to QEMU's working
// directory, the VM's): the command hands it the connection and exits.
const PassPrefix = "pass:"

// ForwardStdio runs Forward on the process's stdin, as QEMU starts it, or
// with a pass: target hands stdin to the forward server there.
func ForwardStdio(ctx context.Context, addr string) error {
	if sock, ok := strings.CutPrefix(addr, PassPrefix); ok {
		return passConn(ctx, sock, os.Stdin)
	}
	conn, err := net.FileConn(os.Stdin)
	if err != nil {
		return fmt.Errorf("vm forward: stdin is not a socket: %w", err)
	}
	return Forward(ctx, addr, conn)
}

// passConn sends the descriptor of conn to the forward server listening on
// sock. Once sent, the kernel holds the connection for the server; this
// process may exit.
func passConn(ctx context.Context, sock string, conn *os.File) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(conn.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("vm forward: %s is not a socket (%v)", conn.Name(), err)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("vm forward: %w", err)
	}
	defer c.Close()
	_, _, err = c.(*net.UnixConn).WriteMsgUnix([]byte{0}, unix.UnixRights(int(conn.Fd())), nil)
	if err != nil {
		return fmt.Errorf("vm forward: pass the connection to %s: %w", sock, err)
	}
	return nil
}

// dialTCP dials the node's NATS at addr (host:port): the upstream of every
// guest connection, whichever way it reaches the driver.
func dialTCP(addr string) func(context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

// serveForwards takes the guest connections that forward commands pass on
// ln and splices each to a connection dial makes to the node's NATS, until
// ln is closed. A connection whose upstream cannot be dialled is closed: the
// guest sees it refused, and retries.
func serveForwards(ln *net.UnixListener, dial func(context.Context) (net.Conn, error), log *slog.Logger) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		go func() {
			guest, err := receiveConn(c)
			c.Close()
			if err != nil {
				log.Warn("Guest NATS connection not taken", "error", err)
				return
			}
			up, err := dial(context.Background())
			if err != nil {
				log.Warn("Guest NATS connection: dial the node's NATS", "error", err)
				guest.Close()
				return
			}
			splice.Conns(context.Background(), guest, up)
		}()
	}
}

// receiveConn reads the one descriptor a forward command sends and makes it
// a connection.
func receiveConn(c *net.UnixConn) (net.Conn, error) {
	c.SetReadDeadline(time.Now().Add(passTimeout))
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := c.ReadMsgUnix(make([]byte, 1), oob)
	if err != nil {
		return nil, err
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("no descriptor passed (%d messages, %v)", len(msgs), err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("want one descriptor, got %d (%v)", len(fds), err)
	}
	f := os.NewFile(uintptr(fds[0]), "guest-conn")
	defer f.Close() // FileConn holds its own copy
	return net.FileConn(f)
}

// passTimeout bounds the wait for a forward command's descriptor.
const passTimeout = 5 * time.Second

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
