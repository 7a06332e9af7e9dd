package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// The file port (agentapi.FilePortName): QEMU dials files.sock as it starts,
// as it does agent.sock, and the connection stays for the VM's life. Stage
// pushes a deploy's artifact over it into the guest's tmpfs, where PID 1
// writes it: virtio-serial moves hundreds of MB/s here, the agent's NATS
// download through user-mode networking tens, and the agent need not hash
// what the node verified. A snapshot template listens on its own files.sock
// and is saved before any file is sent; each clone's QEMU dials the clone's
// socket.

// Bounds of one transfer: a guest that stops reading must not hold a
// deploy. The floor rate is far below what the port moves even under TCG on
// a busy host.
const (
	stageBaseTimeout = 5 * time.Second
	stageMinRate     = 16 << 20 // bytes/s
)

func stageTimeout(size int64) time.Duration {
	return stageBaseTimeout + time.Duration(size)*time.Second/stageMinRate
}

// filePort is the host end of one VM's file port.
type filePort struct {
	ln *net.UnixListener
	// timeout bounds one transfer of size bytes (stageTimeout).
	timeout func(size int64) time.Duration

	mu sync.Mutex // one frame at a time
	r  *bufio.Reader
	// broken is why the port is no longer used: a frame was cut off (the
	// stream is out of step) or QEMU never connected.
	broken error

	cmu    sync.Mutex // conn and closed, shared with close
	conn   net.Conn
	closed bool
}

var _ sandbox.Stager = (*vm)(nil)

// Stage implements sandbox.Stager: it pushes src (already verified by the
// node) into the guest as agentapi.StagedDir/name and returns that path.
// On any error the node streams the artifact over NATS as before.
func (v *vm) Stage(ctx context.Context, src, name string) (string, error) {
	if v.files == nil {
		return "", fmt.Errorf("stage into vm %s: no file port", v.id)
	}
	t0 := time.Now()
	path, n, err := v.files.push(ctx, src, name)
	if err != nil {
		return "", fmt.Errorf("stage into vm %s: %w", v.id, err)
	}
	took := time.Since(t0)
	v.log.Debug("Artifact staged in the guest", "path", path, "bytes", n, logTook, took,
		"mb_per_s", float64(n)/1e6/max(took.Seconds(), 1e-6))
	return path, nil
}

func newFilePort(ln *net.UnixListener) *filePort { return &filePort{ln: ln, timeout: stageTimeout} }

// push sends one file and returns where the guest put it. It gives up at
// the transfer's deadline or when ctx ends, whichever comes first.
func (p *filePort) push(ctx context.Context, src, name string) (string, int64, error) {
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	if err := agentapi.CheckStagedName(name); err != nil {
		return "", 0, err
	}
	f, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", 0, err
	}
	size := st.Size()
	if size > agentapi.MaxStagedSize {
		return "", size, fmt.Errorf("%s is %d bytes, more than the file port takes (%d)", src, size, agentapi.MaxStagedSize)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken != nil {
		return "", size, fmt.Errorf("file port unusable: %w", p.broken)
	}
	deadline := time.Now().Add(p.timeout(size))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn, err := p.connect(ctx, deadline)
	if err != nil {
		if ctx.Err() == nil { // QEMU never connected: the port is no use
			p.broken = err
		}
		return "", size, err
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	path, err := sendFile(conn, p.r, name, size, f)
	if !stop() && err != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		return "", size, err
	case err != nil:
		// Cut off mid-frame: what the guest reads next would not start a
		// frame. Hanging up tells it so.
		p.broken = err
		conn.Close()
		return "", size, err
	}
	return path, size, nil
}

// connect takes QEMU's connection the first time (it waits in the
// listener's backlog since QEMU started).
func (p *filePort) connect(ctx context.Context, deadline time.Time) (net.Conn, error) {
	p.cmu.Lock()
	conn, closed := p.conn, p.closed
	p.cmu.Unlock()
	if closed {
		return nil, errors.New("the vm has ended")
	}
	if conn != nil {
		return conn, nil
	}
	p.ln.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { p.ln.SetDeadline(time.Unix(1, 0)) })
	conn, err := p.ln.Accept()
	stop()
	if err != nil {
		return nil, fmt.Errorf("accept qemu's connection: %w", err)
	}
	p.cmu.Lock()
	defer p.cmu.Unlock()
	if p.closed {
		conn.Close()
		return nil, errors.New("the vm has ended")
	}
	p.conn, p.r = conn, bufio.NewReader(conn)
	return conn, nil
}

// close ends the port when QEMU has exited, unblocking a transfer.
func (p *filePort) close() {
	p.cmu.Lock()
	defer p.cmu.Unlock()
	p.closed = true
	p.ln.Close()
	if p.conn != nil {
		p.conn.Close()
	}
}

// refusedError is the guest's answer to a frame it read but did not keep:
// the port stays usable.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return "guest refused the file: " + e.msg }

// sendFile writes one frame (header line, then size bytes of body) and
// reads the guest's answer.
func sendFile(w io.Writer, replies *bufio.Reader, name string, size int64, body io.Reader) (string, error) {
	h, err := json.Marshal(agentapi.FileHeader{Name: name, Size: size})
	if err != nil {
		return "", err
	}
	if _, err := w.Write(append(h, '\n')); err != nil {
		return "", fmt.Errorf("write header: %w", err)
	}
	n, err := io.CopyBuffer(w, io.LimitReader(body, size), make([]byte, 256<<10))
	if err == nil && n < size {
		err = fmt.Errorf("source ended after %d of %d bytes", n, size)
	}
	if err != nil {
		return "", fmt.Errorf("write body: %w", err)
	}
	line, err := replies.ReadSlice('\n')
	if err != nil {
		return "", fmt.Errorf("read the guest's answer: %w", err)
	}
	var r agentapi.FileReply
	if err := json.Unmarshal(line, &r); err != nil {
		return "", fmt.Errorf("guest's answer %q: %w", line, err)
	}
	if r.Error != "" {
		return "", &refusedError{r.Error}
	}
	if r.Path == "" {
		return "", errors.New("guest's answer has neither a path nor an error")
	}
	return r.Path, nil
}
