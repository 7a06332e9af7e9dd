package trial

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// serverConn is a client's end of a trial server's connection.
func serverConn(t *testing.T) (*server, <-chan struct{}, net.Conn, *bufio.Reader) {
	t.Helper()
	answered := make(chan struct{})
	s := &server{answered: func() { close(answered) }}
	client, srv := net.Pipe()
	go func() { _ = s.conn(srv); srv.Close() }()
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(client)
	if l := readLine(t, r); !strings.HasPrefix(l, "INFO {") {
		t.Fatalf("first line %q, want INFO", l)
	}
	return s, answered, client, r
}

func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(l, "\r\n")
}

func write(t *testing.T, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// A client that subscribes, then PINGs and reads up to the PONG (a
// flush; nex's C echo does so, skipping all else) gets its request after
// the PONG; its reply to it ends the trial's purpose (answered). Inbox
// subscriptions get none.
func TestServerRequestAfterTheFlush(t *testing.T) {
	s, answered, c, r := serverConn(t)
	write(t, c, "CONNECT {}\r\nSUB _INBOX.abc.* 1\r\nSUB svc.echo 2\r\nPING\r\n")
	for _, want := range []string{"PONG", "MSG svc.echo 2 _INBOX.trial.1 0", ""} {
		if l := readLine(t, r); l != want {
			t.Fatalf("got %q, want %q", l, want)
		}
	}
	select {
	case <-answered:
		t.Fatal("answered before the reply")
	default:
	}
	write(t, c, "PUB _INBOX.trial.1 2\r\nok\r\n")
	select {
	case <-answered:
	case <-time.After(5 * time.Second):
		t.Fatal("the reply did not count")
	}
	if s.requests.Load() != 1 || s.replies.Load() != 1 {
		t.Fatalf("requests %d, replies %d; want 1 and 1", s.requests.Load(), s.replies.Load())
	}
}

// A client that subscribes and sends no PING gets its request all the
// same, its wildcard tokens filled in.
func TestServerRequestWithoutAFlush(t *testing.T) {
	_, _, c, r := serverConn(t)
	write(t, c, "CONNECT {}\r\nSUB svc.*.x.> q 7\r\n")
	if l := readLine(t, r); l != "MSG svc.trial.x.trial 7 _INBOX.trial.1 0" {
		t.Fatalf("got %q", l)
	}
}
