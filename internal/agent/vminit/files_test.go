package vminit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
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
	host, guest := unixPair(t)
	p := &fileTestPort{host: host, reply: bufio.NewReader(host), dir: filepath.Join(t.TempDir(), "staged"), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s := &FileServer{Dir: p.dir, Log: testLog(t), Room: room}
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
	h, _ := json.Marshal(agentapi.FileHeader{Name: name, Size: size})
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
	if !strings.Contains(r.Error, "does not fit") || !strings.Contains(r.Error, "memsize_mib") {
		t.Fatalf("reply %+v, want a clear no-room error", r)
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
