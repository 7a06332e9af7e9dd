package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// qmp is a minimal client of the QEMU Machine Protocol: one command at a
// time over a unix socket; events are noted by name, for waitEvent, and
// otherwise dropped. That is all the driver needs (quit, migration and
// its events) and keeps a dependency out.
type qmp struct {
	conn net.Conn
	r    *bufio.Reader
	seen map[string]bool // events read so far (read notes them)
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpReply is any message QEMU sends: the greeting, a command's return or
// error, or an asynchronous event.
type qmpReply struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *QMPError       `json:"error"`
	Event    string          `json:"event"`
}

// dialQMP connects to QEMU's QMP socket, reads the greeting and leaves
// capabilities negotiation mode. The socket listens from before QEMU starts
// (the driver made it, qmpFD), so a connection that fails means QEMU has
// gone; one made while QEMU initializes waits for its greeting.
func dialQMP(ctx context.Context, path string) (*qmp, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp dial: %w", err)
	}
	q := &qmp{conn: conn, r: bufio.NewReader(conn)}
	if err := q.handshake(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) handshake(ctx context.Context) error {
	stop := q.bind(ctx)
	defer stop()
	msg, err := q.read()
	if err != nil {
		return fmt.Errorf("qmp greeting: %w", ctxErr(ctx, err))
	}
	if msg.Greeting == nil {
		return errors.New("qmp greeting: unexpected first message")
	}
	return q.exec(ctx, "qmp_capabilities", nil, nil)
}

// exec runs one command and decodes its return value into out (if not nil).
func (q *qmp) exec(ctx context.Context, command string, args, out any) error {
	return q.call(ctx, command, args, out, nil)
}

// passFD hands QEMU an open file under name (QMP getfd, the descriptor
// passed with SCM_RIGHTS on the command's message), for a later command to
// name as "fd:<name>". QEMU holds its own copy; f may be closed after.
func (q *qmp) passFD(ctx context.Context, name string, f *os.File) error {
	if _, ok := q.conn.(*net.UnixConn); !ok {
		return fmt.Errorf("qmp getfd: %T cannot pass a descriptor", q.conn)
	}
	return q.call(ctx, "getfd", map[string]string{"fdname": name}, nil, f)
}

// call writes one command, with f's descriptor attached when f is set, and
// reads until its return or error.
func (q *qmp) call(ctx context.Context, command string, args, out any, f *os.File) error {
	stop := q.bind(ctx)
	defer stop()
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	b = append(b, '\n')
	if f != nil {
		_, _, err = q.conn.(*net.UnixConn).WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = q.conn.Write(b)
	}
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, ctxErr(ctx, err))
	}
	for {
		msg, err := q.read()
		if err != nil {
			return fmt.Errorf("qmp %s: %w", command, ctxErr(ctx, err))
		}
		switch {
		case msg.Event != "":
			continue
		case msg.Error != nil:
			msg.Error.Command = command
			return msg.Error
		case msg.Return != nil:
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(msg.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
			return nil
		}
	}
}

// waitEvent returns once QEMU has sent the event name, on this connection
// and at any time since it was made.
func (q *qmp) waitEvent(ctx context.Context, name string) error {
	stop := q.bind(ctx)
	defer stop()
	for !q.seen[name] {
		if _, err := q.read(); err != nil {
			return fmt.Errorf("qmp: waiting for %s: %w", name, ctxErr(ctx, err))
		}
	}
	return nil
}

func (q *qmp) read() (qmpReply, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return qmpReply{}, err
	}
	var msg qmpReply
	if err := json.Unmarshal(line, &msg); err != nil {
		return qmpReply{}, fmt.Errorf("bad message %q: %w", line, err)
	}
	if msg.Event != "" {
		if q.seen == nil {
			q.seen = map[string]bool{}
		}
		q.seen[msg.Event] = true
	}
	return msg, nil
}

// bind makes blocking reads and writes end with ctx: at its deadline, or at
// once when it is cancelled.
func (q *qmp) bind(ctx context.Context) (stop func()) {
	dl, _ := ctx.Deadline()
	q.conn.SetDeadline(dl)
	unhook := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	return func() { unhook(); q.conn.SetDeadline(time.Time{}) }
}

// ctxErr says when an I/O error is ctx's doing. The connection's deadline
// is ctx's, and may pass a moment before ctx itself reports it.
func ctxErr(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && cerr == nil && errors.Is(err, os.ErrDeadlineExceeded) && !time.Now().Before(dl) {
		cerr = context.DeadlineExceeded
	}
	if cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}

func (q *qmp) Close() error { return q.conn.Close() }

// The commands the driver uses.

type migrationInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

func (q *qmp) migration(ctx context.Context) (migrationInfo, error) {
	var m migrationInfo
	return m, q.exec(ctx, "query-migrate", nil, &m)
}

// setCapability turns one migration capability on or off.
func (q *qmp) setCapability(ctx context.Context, name string, on bool) error {
	type capability struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	return q.exec(ctx, "migrate-set-capabilities",
		map[string]any{"capabilities": []capability{{name, on}}}, nil)
}
