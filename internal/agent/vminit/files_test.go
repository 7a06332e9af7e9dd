package vminit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
)

// The guest's side of the file port, driven with raw frames over a socket
// pair (the host's writer is tested against this server in the qemu
// package).

type fileTestPort struct {
	host  net.Conn
	reply *bufio.Reader
	dir   string
	done  chan error
}

// startFileServer runs a FileServer on one end of a socket pair and
// returns the other end.
func startFileServer(t *testing.T, room func(string) (int64, error)) *fileTestPort {
	t.Helper()
	return startFileServerWith(t, &FileServer{Room: room})
}

// startFileServerWith runs s (given its Dir and Log here).
func startFileServerWith(t *testing.T, s *FileServer) *fileTestPort {
	t.Helper()
	host, guest := unixPair(t)
	p := &fileTestPort{host: host, reply: bufio.NewReader(host), dir: filepath.Join(t.TempDir(), "staged"), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.Dir, s.Log = p.dir, testLog(t)
	go func() { p.done <- s.Serve(ctx, guest) }()
	t.Cleanup(func() {
		cancel()
		host.Close()
		guest.Close()
		<-p.done
	})
	return p
}

func unixPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, s
}

func plenty(string) (int64, error) { return 1 << 30, nil }

// send writes a frame whose header says size and whose body is body.
func (p *fileTestPort) send(t *testing.T, name string, size int64, body []byte) agentapi.FileReply {
	t.Helper()
	p.write(t, name, size, body)
	return p.read(t)
}

func (p *fileTestPort) write(t *testing.T, name string, size int64, body []byte) {
	t.Helper()
	p.writeHeader(t, agentapi.FileHeader{Name: name, Size: size}, body)
}

func (p *fileTestPort) writeHeader(t *testing.T, fh agentapi.FileHeader, body []byte) {
	t.Helper()
	h, _ := json.Marshal(fh)
	p.host.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := p.host.Write(append(append(h, '\n'), body...)); err != nil {
		t.Fatal(err)
	}
}

func (p *fileTestPort) read(t *testing.T) agentapi.FileReply {
	t.Helper()
	line, err := p.reply.ReadBytes('\n')
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	var r agentapi.FileReply
	if err := json.Unmarshal(line, &r); err != nil {
		t.Fatalf("reply %q: %v", line, err)
	}
	return r
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestFileServerWritesFiles(t *testing.T) {
	p := startFileServer(t, plenty)
	for i, size := range []int{3<<20 + 17, 0, 1} {
		name := fmt.Sprintf("artifact-%d", i)
		body := randomBytes(t, size)
		r := p.send(t, name, int64(size), body)
		if r.Error != "" {
			t.Fatalf("frame %d refused: %s", i, r.Error)
		}
		if want := filepath.Join(p.dir, name); r.Path != want {
			t.Fatalf("path = %q, want %q", r.Path, want)
		}
		got, err := os.ReadFile(r.Path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("frame %d: file differs from what was sent (%d bytes, want %d)", i, len(got), size)
		}
		st, _ := os.Stat(r.Path)
		if st.Mode().Perm() != 0o700 {
			t.Fatalf("mode = %v, want 0700", st.Mode().Perm())
		}
	}
	// The same name again replaces the file.
	body := []byte("second version")
	if r := p.send(t, "artifact-0", int64(len(body)), body); r.Error != "" {
		t.Fatal(r.Error)
	}
	if got, _ := os.ReadFile(filepath.Join(p.dir, "artifact-0")); !bytes.Equal(got, body) {
		t.Fatalf("replaced file = %q", got)
	}
	assertOnly(t, p.dir, "artifact-0", "artifact-1", "artifact-2")
}

// A delete frame removes a staged file and only that; a file that is not
// there is no error, a bad name is refused, and the port stays in step.
func TestFileServerDeletes(t *testing.T) {
	p := startFileServer(t, plenty)
	for _, name := range []string{"keep", "drop"} {
		if r := p.send(t, name, 3, []byte("abc")); r.Error != "" {
			t.Fatal(r.Error)
		}
	}
	del := func(name string) agentapi.FileReply {
		t.Helper()
		p.writeHeader(t, agentapi.FileHeader{Name: name, Delete: true}, nil)
		return p.read(t)
	}
	if r := del("drop"); r != (agentapi.FileReply{}) {
		t.Fatalf("delete answered %+v, want an empty reply", r)
	}
	assertOnly(t, p.dir, "keep")
	if r := del("drop"); r != (agentapi.FileReply{}) {
		t.Fatalf("deleting a file that is gone answered %+v, want an empty reply", r)
	}
	for _, name := range []string{"..", ".part-keep", "a/b"} {
		if r := del(name); !strings.Contains(r.Error, "staged file name") {
			t.Fatalf("delete %q answered %+v, want a name error", name, r)
		}
	}
	assertOnly(t, p.dir, "keep")
	if r := p.send(t, "next", 1, []byte("x")); r.Error != "" || r.Path == "" {
		t.Fatalf("a file after the deletes: %+v", r)
	}
}

// A refused name's bytes are dropped and the next frame works: the stream
// stays in step.
func TestFileServerRefusesBadNames(t *testing.T) {
	p := startFileServer(t, plenty)
	for _, name := range []string{"", ".", "..", "../escape", "a/b", ".part-x", "/etc/passwd", "x\x00y"} {
		body := randomBytes(t, 70000)
		r := p.send(t, name, int64(len(body)), body)
		if r.Error == "" || !strings.Contains(r.Error, "staged file name") {
			t.Fatalf("name %q: reply %+v, want a name error", name, r)
		}
	}
	if r := p.send(t, "good", 4, []byte("good")); r.Error != "" {
		t.Fatalf("frame after refusals: %s", r.Error)
	}
	assertOnly(t, p.dir, "good")
	if _, err := os.Stat(filepath.Join(filepath.Dir(p.dir), "escape")); err == nil {
		t.Fatal("../escape was written outside the staged dir")
	}
}

func TestFileServerNoRoom(t *testing.T) {
	p := startFileServer(t, func(string) (int64, error) { return 1 << 20, nil })
	body := randomBytes(t, 1<<20+1)
	r := p.send(t, "big", int64(len(body)), body)
	if !r.NoRoom || !strings.Contains(r.Error, "does not fit") || !strings.Contains(r.Error, "memsize_mib") {
		t.Fatalf("reply %+v, want a clear no-room error", r)
	}
	if r := p.send(t, "bad/name", 1, []byte("x")); r.Error == "" || r.NoRoom {
		t.Fatalf("reply %+v to a bad name: want an error that is not NoRoom", r)
	}
	if r := p.send(t, "small", 5, []byte("small")); r.Error != "" {
		t.Fatalf("frame after a refusal: %s", r.Error)
	}
	assertOnly(t, p.dir, "small")
}

// A host that hangs up mid-frame gets no answer and leaves no file behind;
// the server waits for the next host.
func TestFileServerShortFrame(t *testing.T) {
	host, guest := unixPair(t)
	dir := filepath.Join(t.TempDir(), "staged")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := &FileServer{Dir: dir, Log: testLog(t), Room: plenty}
	done := make(chan error, 1)
	// The server's first read past the hang-up cancels it, so Serve
	// returns only once it has dealt with the cut-off frame.
	go func() { done <- s.Serve(ctx, readWriter{&cancelOnEOF{r: guest, cancel: cancel}, guest}) }()
	h, _ := json.Marshal(agentapi.FileHeader{Name: "cut", Size: 1 << 20})
	if _, err := host.Write(append(append(h, '\n'), randomBytes(t, 300<<10)...)); err != nil {
		t.Fatal(err)
	}
	host.(*net.UnixConn).CloseWrite()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v, want nil (ended by its context)", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("Serve did not notice the hang-up")
	}
	guest.Close()
	host.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, _ := io.ReadAll(host); len(b) != 0 {
		t.Fatalf("the server answered a cut-off frame: %q", b)
	}
	assertOnly(t, dir)
}

type cancelOnEOF struct {
	r      io.Reader
	cancel func()
}

func (c *cancelOnEOF) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if err == io.EOF {
		c.cancel()
	}
	return n, err
}

// Frames the server cannot parse leave it out of step: it answers with the
// error and stops.
func TestFileServerBadHeaders(t *testing.T) {
	tests := []struct {
		name, header, want string
	}{
		{"oversize", fmt.Sprintf(`{"name":"x","size":%d}`, agentapi.MaxStagedSize+1), "outside 0.."},
		{"negative", `{"name":"x","size":-1}`, "outside 0.."},
		{"not json", `hello`, "header"},
		{"too long", `{"name":"` + strings.Repeat("x", agentapi.MaxFileHeader) + `","size":1}`, "longer than"},
		{"disk and body", `{"name":"x","size":1,"disk_size":1}`, "size 0"},
		{"disk oversize", fmt.Sprintf(`{"name":"x","size":0,"disk_size":%d}`, agentapi.MaxStagedSize+1), "disk size"},
		{"delete with a body", `{"name":"x","size":3,"delete":true}`, "want both 0"},
		{"delete from the disk", `{"name":"x","disk_size":3,"delete":true}`, "want both 0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := startFileServer(t, plenty)
			p.host.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.WriteString(p.host, tt.header+"\n"); err != nil {
				t.Fatal(err)
			}
			r := p.read(t)
			if !strings.Contains(r.Error, tt.want) {
				t.Fatalf("reply %+v, want an error with %q", r, tt.want)
			}
			select {
			case err := <-p.done:
				p.done <- err // for the cleanup
				if err == nil {
					t.Fatal("Serve returned nil after a bad header")
				}
			case <-time.After(time.Minute):
				t.Fatal("Serve went on after a bad header")
			}
		})
	}
}

// A failed write (an injected error here; a full tmpfs in
// TestFileServerFullTmpfs) drops the rest of the frame and answers.
func TestCopyFrameKeepsStep(t *testing.T) {
	src := bytes.NewReader(randomBytes(t, 1000))
	w := &failAfter{n: 300}
	werr, rerr := copyFrame(w, src, 900, make([]byte, 128))
	if werr == nil || rerr != nil {
		t.Fatalf("copyFrame = %v, %v; want a write error and no read error", werr, rerr)
	}
	if src.Len() != 100 {
		t.Fatalf("%d bytes left unread, want 100: the frame was not read to its end", src.Len())
	}
	// Short source: a read error.
	_, rerr = copyFrame(io.Discard, bytes.NewReader(make([]byte, 10)), 20, make([]byte, 8))
	if rerr != io.ErrUnexpectedEOF {
		t.Fatalf("short frame: read error %v, want io.ErrUnexpectedEOF", rerr)
	}
}

type failAfter struct{ n int }

func (f *failAfter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, io.ErrShortWrite
	}
	return len(p), nil
}

func TestMemAvailable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "meminfo")
	os.WriteFile(p, []byte("MemTotal:         120000 kB\nMemFree:           50000 kB\nMemAvailable:      61440 kB\n"), 0o600)
	got, err := memAvailable(p)
	if err != nil || got != 60<<20 {
		t.Fatalf("memAvailable = %d, %v; want %d", got, err, 60<<20)
	}
	os.WriteFile(p, []byte("MemTotal: 1 kB\n"), 0o600)
	if _, err := memAvailable(p); err == nil {
		t.Fatal("no MemAvailable line: want an error")
	}
}

// assertOnly fails unless dir holds exactly names (no leftover part files).
func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != fmt.Sprint(names) {
		t.Fatalf("%s holds %v, want %v", dir, got, names)
	}
}

// testDisk is a stage disk stand-in: a regular file holding data, then
// bytes no file should get.
type testDisk struct {
	path             string
	opened, released int
}

func newTestDisk(t *testing.T, data []byte) *testDisk {
	t.Helper()
	d := &testDisk{path: filepath.Join(t.TempDir(), "disk")}
	if err := os.WriteFile(d.path, append(slices.Clone(data), randomBytes(t, 1<<20)...), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *testDisk) open() (*os.File, func(), error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, nil, err
	}
	d.opened++
	return f, func() { d.released++; f.Close() }, nil
}

// A frame naming the stage disk gets the disk's first DiskSize bytes as the
// file, and the disk is released after each copy; frames with bodies still
// work next to it.
func TestFileServerFromDisk(t *testing.T) {
	data := randomBytes(t, 3<<20+5)
	disk := newTestDisk(t, data)
	p := startFileServerWith(t, &FileServer{Room: plenty, Disk: disk.open})
	for round := range 2 {
		p.writeHeader(t, agentapi.FileHeader{Name: "from-disk", DiskSize: int64(len(data))}, nil)
		r := p.read(t)
		if r.Error != "" || !r.Disk || r.NoDisk || r.Path != filepath.Join(p.dir, "from-disk") {
			t.Fatalf("round %d: reply %+v, want the file from the disk", round, r)
		}
		if got, _ := os.ReadFile(r.Path); !bytes.Equal(got, data) {
			t.Fatalf("round %d: file (%d bytes) is not the disk's first %d bytes", round, len(got), len(data))
		}
		if disk.opened != round+1 || disk.released != round+1 {
			t.Fatalf("round %d: disk opened %d, released %d times", round, disk.opened, disk.released)
		}
	}
	if r := p.send(t, "streamed", 4, []byte("body")); r.Error != "" || r.Disk {
		t.Fatalf("streamed frame after disk frames: %+v", r)
	}
	// Refusals happen before the disk is touched, and leave no file.
	p.writeHeader(t, agentapi.FileHeader{Name: "../x", DiskSize: 10}, nil)
	if r := p.read(t); !strings.Contains(r.Error, "staged file name") || r.Disk {
		t.Fatalf("bad name from disk: %+v", r)
	}
	// A disk shorter than the header says is an error, not a short file.
	p.writeHeader(t, agentapi.FileHeader{Name: "too-long", DiskSize: int64(len(data)) + 2<<20}, nil)
	if r := p.read(t); !strings.Contains(r.Error, "ended after") || r.Path != "" {
		t.Fatalf("file longer than the disk: %+v", r)
	}
	if disk.opened != disk.released {
		t.Fatalf("disk opened %d, released %d times", disk.opened, disk.released)
	}
	assertOnly(t, p.dir, "from-disk", "streamed")
}

// Without a stage disk, or with one that will not open, the guest asks for
// the bytes (NoDisk) and keeps serving.
func TestFileServerNoDisk(t *testing.T) {
	broken := func() (*os.File, func(), error) { return nil, nil, errors.New("no such device") }
	for name, s := range map[string]*FileServer{"none": {Room: plenty}, "broken": {Room: plenty, Disk: broken}} {
		t.Run(name, func(t *testing.T) {
			p := startFileServerWith(t, s)
			p.writeHeader(t, agentapi.FileHeader{Name: "f", DiskSize: 100}, nil)
			if r := p.read(t); !r.NoDisk || r.Error != "" || r.Path != "" {
				t.Fatalf("reply %+v, want NoDisk", r)
			}
			if r := p.send(t, "f", 3, []byte("abc")); r.Error != "" {
				t.Fatalf("the bytes after NoDisk: %+v", r)
			}
			assertOnly(t, p.dir, "f")
		})
	}
}

// Rehearse copies from the stage disk into the staged dir as a frame would,
// leaves nothing behind, and releases the disk; once a frame has come it
// does nothing (the frame ran the code), nor does it without a disk, and a
// broken disk is an error.
func TestFileServerRehearse(t *testing.T) {
	disk := newTestDisk(t, randomBytes(t, 2<<20))
	dir := filepath.Join(t.TempDir(), "staged")
	s := &FileServer{Dir: dir, Log: testLog(t), Room: plenty, Disk: disk.open}
	if err := s.Rehearse(context.Background()); err != nil {
		t.Fatal(err)
	}
	if disk.opened != 1 || disk.released != 1 {
		t.Fatalf("disk opened %d, released %d times; want once each", disk.opened, disk.released)
	}
	assertOnly(t, dir)

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Rehearse(ctx); !errors.Is(err, context.Canceled) || disk.opened != 1 {
		t.Fatalf("Rehearse after its context ended = %v (disk opened %d times); want context.Canceled, disk untouched", err, disk.opened)
	}

	broken := &FileServer{Dir: dir, Log: testLog(t), Room: plenty, Disk: func() (*os.File, func(), error) {
		return nil, nil, errors.New("no such device")
	}}
	if err := broken.Rehearse(context.Background()); err == nil || !strings.Contains(err.Error(), "stage disk") {
		t.Fatalf("Rehearse with a disk that will not open = %v; want an error about the stage disk", err)
	}
	if err := (&FileServer{Dir: dir, Log: testLog(t)}).Rehearse(context.Background()); err != nil {
		t.Fatalf("Rehearse without a disk = %v; want nothing done", err)
	}

	p := startFileServerWith(t, s)
	if r := p.send(t, "f", 3, []byte("abc")); r.Error != "" {
		t.Fatalf("frame: %+v", r)
	}
	if err := s.Rehearse(context.Background()); err != nil || disk.opened != 1 {
		t.Fatalf("Rehearse after a frame = %v, disk opened %d times; want nothing done", err, disk.opened)
	}
	assertOnly(t, p.dir, "f")
}
