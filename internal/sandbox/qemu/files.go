package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// The file port (agentapi.FilePortName): QEMU dials files.sock as it starts,
// as it does agent.sock, and the connection stays for the VM's life. Stage
// pushes a deploy's artifact over it into the guest's tmpfs, where PID 1
// writes it: virtio-serial moves hundreds of MB/s here, the agent's NATS
// download (chunked requests, then a hash under emulation) far less, and
// the agent need not hash what the node verified. A snapshot template
// listens on its own files.sock and is saved before any file is sent; each
// clone's QEMU dials the clone's socket.

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
	// disk is the backing file of the VM's stage disk ("" without one):
	// a file is written there and the frame names it, instead of carrying
	// its bytes (agentapi.FileHeader.DiskSize).
	disk string
	log  *slog.Logger
	// noDisk: the guest cannot read the stage disk (a kernel without
	// virtio_blk, or an older nex as /init), so frames carry the bytes.
	noDisk bool

	mu sync.Mutex // one frame at a time
	r  *bufio.Reader
	// broken is why the port is no longer used: a frame was cut off (the
	// stream is out of step) or QEMU never connected.
	broken error

	cmu    sync.Mutex // conn and closed, shared with close
	conn   net.Conn
	closed bool
}

var (
	_ sandbox.Prestager    = (*vm)(nil)
	_ sandbox.TrialStarter = (*vm)(nil)
)

// Prestage implements sandbox.Prestager: a VM with a file port takes files
// ahead of a deploy.
func (v *vm) Prestage() bool { return v.files != nil }

// Stage implements sandbox.Stager: it pushes src (already verified by the
// node) into the guest as agentapi.StagedDir/name and returns that path.
// On any error the node streams the artifact over NATS as before.
func (v *vm) Stage(ctx context.Context, src, name string) (string, error) {
	return v.stage(ctx, src, name, nil)
}

// StageTrial implements sandbox.TrialStarter: Stage, and the guest then
// gives the file a trial start with args (agentapi.FileHeader.Trial).
func (v *vm) StageTrial(ctx context.Context, src, name string, args []string) (string, error) {
	return v.stage(ctx, src, name, &agentapi.TrialStart{Args: args})
}

func (v *vm) stage(ctx context.Context, src, name string, trial *agentapi.TrialStart) (string, error) {
	if v.files == nil {
		return "", fmt.Errorf("stage into vm %s: no file port", v.id)
	}
	t0 := time.Now()
	path, n, err := v.files.send(ctx, agentapi.FileHeader{Name: name, Trial: trial}, src)
	if err != nil {
		return "", fmt.Errorf("stage into vm %s: %w", v.id, err)
	}
	took := time.Since(t0)
	v.log.Debug("Artifact staged in the guest", "path", path, "bytes", n, "via", v.files.via(), logTook, took,
		"mb_per_s", float64(n)/1e6/max(took.Seconds(), 1e-6))
	return path, nil
}

// newFilePort serves the port on ln, with the stage disk whose backing file
// is disk ("": none).
func newFilePort(ln *net.UnixListener, disk string, log *slog.Logger) *filePort {
	return &filePort{ln: ln, timeout: stageTimeout, disk: disk, log: log}
}

// Unstage implements sandbox.Prestager: the guest deletes the file staged
// ahead as name (agentapi.FileHeader.Delete).
func (v *vm) Unstage(ctx context.Context, name string) error {
	if v.files == nil {
		return fmt.Errorf("unstage from vm %s: no file port", v.id)
	}
	if err := v.files.remove(ctx, name); err != nil {
		return fmt.Errorf("unstage from vm %s: %w", v.id, err)
	}
	return nil
}

// send sends the file src as h.Name, with the rest of h (its sizes are
// set here), and returns where the guest put it. It gives up at the
// transfer's deadline or when ctx ends, whichever comes first.
func (p *filePort) send(ctx context.Context, h agentapi.FileHeader, src string) (string, int64, error) {
	if err := agentapi.CheckStagedName(h.Name); err != nil {
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
	path, err := p.frame(ctx, size, func(conn net.Conn) (path string, err error) {
		sent := false
		if p.disk != "" && !p.noDisk {
			path, sent, err = p.viaDisk(conn, h, size, f)
		}
		if !sent && err == nil {
			path, err = sendFile(conn, p.r, h, size, f)
		}
		return path, err
	})
	return path, size, err
}

// remove has the guest delete the staged file name.
func (p *filePort) remove(ctx context.Context, name string) error {
	if err := agentapi.CheckStagedName(name); err != nil {
		return err
	}
	_, err := p.frame(ctx, 0, func(conn net.Conn) (string, error) {
		r, err := exchange(conn, p.r, agentapi.FileHeader{Name: name, Delete: true}, nil)
		if err == nil && r.Error != "" {
			err = refused(r)
		}
		return "", err
	})
	return err
}

// frame runs one exchange on the port (send), alone, bounded by the
// deadline of a transfer of size bytes and by ctx. A frame cut off midway
// leaves the stream out of step: the port is then broken for good, and
// hanging up tells the guest so. A refusal (refusedError) leaves it usable.
func (p *filePort) frame(ctx context.Context, size int64, send func(net.Conn) (string, error)) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken != nil {
		return "", fmt.Errorf("file port unusable: %w", p.broken)
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
		return "", err
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	path, err := send(conn)
	if !stop() && err != nil {
		err = fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	var refused *refusedError
	switch {
	case errors.As(err, &refused):
		return "", err
	case err != nil:
		p.broken = err
		conn.Close()
		return "", err
	}
	return path, nil
}

// via tells how files cross: "stage disk", or "port" once the guest has
// said it cannot read the disk (or when there is none).
func (p *filePort) via() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.disk == "" || p.noDisk {
		return "port"
	}
	return "stage disk"
}

// viaDisk writes src's size bytes at the start of the stage disk and sends
// a frame (h, with DiskSize) that names them. sent is false, with no error, when the guest
// cannot read the disk: the caller then sends the bytes in a frame.
func (p *filePort) viaDisk(conn net.Conn, h agentapi.FileHeader, size int64, src *os.File) (path string, sent bool, err error) {
	if err := writeDisk(p.disk, src, size); err != nil {
		// Nothing was sent: the bytes can still go over the port.
		p.log.Warn("Stage disk unusable on the host; sending the file over the port", "disk", p.disk, "error", err)
		_, err = src.Seek(0, io.SeekStart)
		return "", false, err
	}
	// Whatever the answer, the guest has read what it will read; the
	// bytes need not take the host's disk space until the next file.
	defer punchHole(p.disk, size)
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return "", false, err
	}
	h.DiskSize = size
	r, err := exchange(conn, p.r, h, nil)
	switch {
	case err != nil:
		return "", false, err
	case r.Error != "":
		return "", false, refused(r)
	case r.NoDisk:
		p.noDisk = true
		return "", false, nil
	case !r.Disk:
		// An /init from before the stage disk took a frame of 0 bytes and
		// made an empty file; the frame with the bytes replaces it.
		p.noDisk = true
		return "", false, nil
	case r.Path == "":
		return "", false, errors.New("guest's answer has neither a path nor an error")
	}
	return r.Path, true, nil
}

// writeDisk copies size bytes of src to the start of the stage disk's
// file. QEMU reads the file through the host's page cache, so the guest
// reads these bytes once it is told to.
func writeDisk(disk string, src io.Reader, size int64) error {
	d, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	n, err := io.Copy(d, io.LimitReader(src, size))
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err == nil && n < size {
		err = fmt.Errorf("source ended after %d of %d bytes", n, size)
	}
	return err
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
type refusedError struct {
	msg    string
	noRoom bool // the file does not fit in the guest
}

func refused(r agentapi.FileReply) error { return &refusedError{msg: r.Error, noRoom: r.NoRoom} }

func (e *refusedError) Error() string { return "guest refused the file: " + e.msg }

// Is makes a file that does not fit sandbox.ErrNoRoom.
func (e *refusedError) Is(target error) bool { return e.noRoom && target == sandbox.ErrNoRoom }

// sendFile writes one frame (header line h with Size, then size bytes of
// body) and reads the guest's answer.
func sendFile(w io.Writer, replies *bufio.Reader, h agentapi.FileHeader, size int64, body io.Reader) (string, error) {
	h.Size = size
	r, err := exchange(w, replies, h, body)
	if err != nil {
		return "", err
	}
	if r.Error != "" {
		return "", refused(r)
	}
	if r.Path == "" {
		return "", errors.New("guest's answer has neither a path nor an error")
	}
	return r.Path, nil
}

// exchange writes one frame, h then h.Size bytes of body, and reads the
// guest's answer.
func exchange(w io.Writer, replies *bufio.Reader, h agentapi.FileHeader, body io.Reader) (agentapi.FileReply, error) {
	var r agentapi.FileReply
	line, err := json.Marshal(h)
	if err != nil {
		return r, err
	}
	if _, err := w.Write(append(line, '\n')); err != nil {
		return r, fmt.Errorf("write header: %w", err)
	}
	if h.Size > 0 {
		n, err := io.CopyBuffer(w, io.LimitReader(body, h.Size), make([]byte, 256<<10))
		if err == nil && n < h.Size {
			err = fmt.Errorf("source ended after %d of %d bytes", n, h.Size)
		}
		if err != nil {
			return r, fmt.Errorf("write body: %w", err)
		}
	}
	if line, err = replies.ReadSlice('\n'); err != nil {
		return r, fmt.Errorf("read the guest's answer: %w", err)
	}
	if err := json.Unmarshal(line, &r); err != nil {
		return r, fmt.Errorf("guest's answer %q: %w", line, err)
	}
	return r, nil
}

// punchHole gives the host back the disk space of the first size bytes of
// the stage disk's file; the file keeps its size. Failing costs only space.
func punchHole(disk string, size int64) {
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size)
}
