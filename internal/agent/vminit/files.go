package vminit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
)

// FileServer is the guest's end of the file port (agentapi.FilePortName):
// it writes the files the host pushes into Dir and answers each frame with
// the file's path or why it was refused. PID 1 runs one on the port; tests
// run it on a socket pair.
type FileServer struct {
	Dir string
	Log *slog.Logger
	// Room tells how many bytes a new file in dir may take; nil: the free
	// space of dir's file system, bounded by the memory the guest has left
	// (defaultRoom).
	Room func(dir string) (int64, error)
	// Disk opens the VM's stage disk (agentapi.StageDiskSerial) for a frame
	// that names it, holding nothing the kernel cached of it before;
	// release is called once the file is copied out. nil: the VM has none.
	Disk func() (disk *os.File, release func(), err error)
	// Trial, if set, is called with the path of each file whose frame asks
	// for a trial start (agentapi.FileHeader.Trial), and its arguments, once
	// the file is in Dir and the host has heard of it; Deleted with the path
	// of each file a frame deletes, before it is deleted. PID 1 starts and
	// ends trial starts (internal/trial) with them.
	Trial   func(path string, args []string)
	Deleted func(path string)

	// framed is set once a frame has begun (Rehearse is then of no use).
	framed atomic.Bool
}

// Bounds of the file server.
const (
	// fileBuf is the size of the server's reads and writes: a virtio-serial
	// read returns one 4 KiB buffer, so the copy gathers many before each
	// write to tmpfs.
	fileBuf = 256 << 10
	// hostGoneWait is the longest pause between reads while no host is
	// connected (a read of a virtio-serial port then returns EOF at once).
	hostGoneWait = time.Second
	// partPrefix names a file being received; valid names never start
	// with a dot, so it cannot clash with one.
	partPrefix = ".part-"
)

// errHostGone: the host hung up in the middle of a frame. Nobody waits for
// an answer; the next frame, if one ever comes, starts afresh.
var errHostGone = errors.New("host hung up mid-frame")

// Serve answers frames on port until ctx ends or the port fails. An EOF
// between frames means no host is connected (not yet, or no more: QEMU
// connects as it starts, but the guest may see the port before it hears of
// that), so Serve waits and reads again, backing off to one read a second.
// A frame it cannot parse leaves it out of step with the host, so it
// answers with the error and stops.
func (s *FileServer) Serve(ctx context.Context, port io.ReadWriter) error {
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("file port: %w", err)
	}
	r := bufio.NewReaderSize(port, fileBuf)
	buf := make([]byte, fileBuf)
	wait := pollEvery
	for {
		h, err := readFileHeader(r)
		switch {
		case errors.Is(err, io.EOF):
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
			wait = min(2*wait, hostGoneWait)
			continue
		case err != nil:
			_ = writeFileReply(port, agentapi.FileReply{Error: err.Error()})
			return fmt.Errorf("file port: %w", err)
		}
		wait = pollEvery
		t0 := time.Now()
		var reply agentapi.FileReply
		if !h.Delete { // a frame that copies runs what Rehearse would
			s.framed.Store(true)
		}
		switch {
		case h.Delete:
			err = s.remove(h.Name)
		case h.DiskSize > 0:
			reply, err = s.fromDisk(h)
		default:
			reply.Path, err = s.receive(r, h, buf)
		}
		if errors.Is(err, errHostGone) {
			s.Log.Warn("file port", "name", h.Name, keyError, err)
			continue
		}
		size := max(h.Size, h.DiskSize)
		switch {
		case err != nil:
			reply.Error = err.Error()
			var nr *noRoomError
			reply.NoRoom = errors.As(err, &nr)
			s.Log.Warn("file refused", "name", h.Name, "bytes", size, "delete", h.Delete, keyError, err)
		case h.Delete:
			s.Log.Debug("file deleted", "name", h.Name, keyTook, time.Since(t0))
		case reply.Path != "":
			s.Log.Debug("file received", "path", reply.Path, "bytes", size, "disk", reply.Disk, keyTook, time.Since(t0))
		}
		if err := writeFileReply(port, reply); err != nil {
			// The host is gone: nobody will take the file.
			if reply.Path != "" {
				os.Remove(reply.Path)
			}
			s.Log.Warn("file port: answer", keyError, err)
		} else if reply.Path != "" && h.Trial != nil && s.Trial != nil {
			s.Trial(reply.Path, h.Trial.Args)
		}
	}
}

// The rehearsal's file (Rehearse): a name no artifact has (the node names
// staged files by their hash), and a size that runs the copy's code once
// while dirtying little of the guest's memory, which an idle clone keeps.
const (
	rehearsalName = "nex-rehearsal"
	rehearsalSize = 64 << 10
)

// Rehearse runs once, with a file of its own that it removes, what a frame
// naming the stage disk runs in the guest: the header's and the answer's
// JSON, the disk's opening, a copy from it into Dir and the rename. Under
// emulation (TCG) the first run of that code is most of what made the
// first file staged into a VM slower than the next (223 against 125 ms
// for the same 9 MB), and a clone's QEMU starts with none of it
// translated. The agent runs it while the VM waits for its deploy
// (agent.Options.RehearseMore), and ends it when one comes. It does
// nothing in a VM without the disk, or once a frame has come: that frame
// ran the code.
func (s *FileServer) Rehearse(ctx context.Context) error {
	if s.Disk == nil || s.framed.Load() {
		return nil
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return err
	}
	t0 := time.Now()
	line, err := json.Marshal(agentapi.FileHeader{Name: rehearsalName, DiskSize: rehearsalSize})
	if err != nil {
		return err
	}
	h, err := readFileHeader(bufio.NewReader(bytes.NewReader(append(line, '\n'))))
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	reply, err := s.fromDisk(h)
	if reply.Path != "" {
		defer os.Remove(reply.Path)
	}
	if err != nil {
		return fmt.Errorf("stage disk: %w", err)
	}
	if reply.NoDisk {
		return errors.New("stage disk unusable")
	}
	if err := writeFileReply(io.Discard, reply); err != nil {
		return err
	}
	s.Log.Info("rehearsed a stage from the disk", keyTook, time.Since(t0).Round(time.Millisecond))
	return nil
}

// readFileHeader reads one header line. io.EOF (alone) means nothing of a
// frame has come: no host is connected.
func readFileHeader(r *bufio.Reader) (agentapi.FileHeader, error) {
	var h agentapi.FileHeader
	line, err := r.ReadSlice('\n')
	switch {
	case len(line) > agentapi.MaxFileHeader || errors.Is(err, bufio.ErrBufferFull):
		return h, fmt.Errorf("header longer than %d bytes", agentapi.MaxFileHeader)
	case err != nil:
		// A header cut off by a hang-up: the host gave up on that frame.
		return h, io.EOF
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, fmt.Errorf("header %q: %w", line, err)
	}
	if h.Size < 0 || h.Size > agentapi.MaxStagedSize {
		return h, fmt.Errorf("header: size %d is outside 0..%d", h.Size, agentapi.MaxStagedSize)
	}
	if h.DiskSize < 0 || h.DiskSize > agentapi.MaxStagedSize || (h.DiskSize > 0 && h.Size != 0) {
		return h, fmt.Errorf("header: disk size %d with size %d: want 0..%d, and size 0", h.DiskSize, h.Size, agentapi.MaxStagedSize)
	}
	if h.Delete && (h.Size != 0 || h.DiskSize != 0) {
		// Its bytes, if any, would follow: the stream would be out of step.
		return h, fmt.Errorf("header: delete with size %d, disk size %d: want both 0", h.Size, h.DiskSize)
	}
	if h.Delete && h.Trial != nil {
		return h, errors.New("header: a trial start of a file it deletes")
	}
	return h, nil
}

// remove deletes Dir/name, a file staged ahead (agentapi.FileHeader.Delete).
// A file that is not there is no error: the node wants it gone.
func (s *FileServer) remove(name string) error {
	if err := agentapi.CheckStagedName(name); err != nil {
		return err
	}
	path := filepath.Join(s.Dir, name)
	if s.Deleted != nil {
		s.Deleted(path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// receive reads one frame's h.Size bytes into Dir/h.Name. A file it
// refuses, or fails to write, has its bytes read and dropped all the same.
// The file appears under its name only once complete.
func (s *FileServer) receive(r io.Reader, h agentapi.FileHeader, buf []byte) (string, error) {
	refuse := agentapi.CheckStagedName(h.Name)
	if refuse == nil {
		refuse = s.checkRoom(h.Size)
	}
	part := filepath.Join(s.Dir, partPrefix+h.Name)
	var f *os.File
	if refuse == nil {
		f, refuse = os.OpenFile(part, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o700)
	}
	if refuse != nil {
		if _, err := copyFrame(io.Discard, r, h.Size, buf); err != nil {
			return "", errHostGone
		}
		return "", refuse
	}
	werr, rerr := copyFrame(f, r, h.Size, buf)
	if rerr != nil {
		f.Close()
		os.Remove(part)
		return "", errHostGone
	}
	return s.keep(f, h.Name, h.Size, werr)
}

// fromDisk copies a file of h.DiskSize bytes from the start of the stage
// disk into Dir/h.Name. A guest without the disk answers NoDisk.
func (s *FileServer) fromDisk(h agentapi.FileHeader) (agentapi.FileReply, error) {
	if s.Disk == nil {
		return agentapi.FileReply{NoDisk: true}, nil
	}
	if err := agentapi.CheckStagedName(h.Name); err != nil {
		return agentapi.FileReply{}, err
	}
	if err := s.checkRoom(h.DiskSize); err != nil {
		return agentapi.FileReply{}, err
	}
	disk, release, err := s.Disk()
	if err != nil {
		s.Log.Warn("stage disk unusable; asking for the bytes on the port", keyError, err)
		return agentapi.FileReply{NoDisk: true}, nil
	}
	defer release()
	f, err := os.OpenFile(filepath.Join(s.Dir, partPrefix+h.Name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o700)
	if err != nil {
		return agentapi.FileReply{}, err
	}
	path, err := s.keep(f, h.Name, h.DiskSize, copyFromDisk(f, disk, h.DiskSize))
	return agentapi.FileReply{Path: path, Disk: path != ""}, err
}

// keep closes f, the part file of name, and after a good write of size
// bytes (werr nil) gives it its name; otherwise it removes it.
func (s *FileServer) keep(f *os.File, name string, size int64, werr error) (string, error) {
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	part := f.Name()
	switch {
	case errors.Is(werr, syscall.ENOSPC):
		os.Remove(part)
		return "", fmt.Errorf("guest %s is full writing %s: give the sandbox more memory (machine_template.memsize_mib): %w",
			s.Dir, mib(size), werr)
	case werr != nil:
		os.Remove(part)
		return "", werr
	}
	path := filepath.Join(s.Dir, name)
	if err := os.Rename(part, path); err != nil {
		os.Remove(part)
		return "", err
	}
	return path, nil
}

// noRoomError is checkRoom's refusal (FileReply.NoRoom).
type noRoomError struct{ msg string }

func (e *noRoomError) Error() string { return e.msg }

func (s *FileServer) checkRoom(size int64) error { return checkRoom(s.Dir, size, s.Room) }

// checkRoom refuses a file of size bytes that would not fit in dir, before
// any of it is written: it would live in guest RAM, and a guest out of
// memory kills processes. room nil is defaultRoom.
func checkRoom(dir string, size int64, room func(dir string) (int64, error)) error {
	if room == nil {
		room = defaultRoom
	}
	free, err := room(dir)
	if err != nil {
		return fmt.Errorf("room in %s: %w", dir, err)
	}
	if size > free {
		return &noRoomError{fmt.Sprintf("a %s file does not fit in the guest (%s left in %s, which is in guest RAM): "+
			"give the sandbox more memory (machine_template.memsize_mib)", mib(size), mib(free), dir)}
	}
	return nil
}

// copyFrame copies exactly size bytes of r to w. A failed write does not
// end it: the rest is read and dropped so the stream stays in step with
// the host. readErr is set when r ended first (the host hung up).
func copyFrame(w io.Writer, r io.Reader, size int64, buf []byte) (writeErr, readErr error) {
	for size > 0 {
		n := int(min(int64(len(buf)), size))
		n, err := io.ReadFull(r, buf[:n])
		size -= int64(n)
		if writeErr == nil && n > 0 {
			_, writeErr = w.Write(buf[:n])
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return writeErr, err
		}
	}
	return writeErr, nil
}

func writeFileReply(w io.Writer, r agentapi.FileReply) error { return json.NewEncoder(w).Encode(r) }

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
