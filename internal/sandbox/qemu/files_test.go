package qemu

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
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agent/vminit"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// The host's writer against the guest's real file server (package vminit)
// over a unix socket: the test dials the port's listener as QEMU does and
// serves the guest's side on that connection.

type fileTest struct {
	port   *filePort
	staged string
	room   func(string) (int64, error)
	// guestDisk: the guest reads the stage disk (the port's disk file,
	// opened as a regular file).
	guestDisk bool
}

func newFileTest(t *testing.T, room func(string) (int64, error)) *fileTest {
	t.Helper()
	return newFileTestDisk(t, room, false, false)
}

// newFileTestDisk is newFileTest with a stage disk on the host (hostDisk)
// and in the guest (guestDisk).
func newFileTestDisk(t *testing.T, room func(string) (int64, error), hostDisk, guestDisk bool) *fileTest {
	t.Helper()
	dir := t.TempDir()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, filesSock), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	disk := ""
	if hostDisk {
		disk = filepath.Join(dir, stageDisk)
		if err := createStageDisk(context.Background(), &vm{dir: dir}); err != nil {
			t.Fatal(err)
		}
	}
	ft := &fileTest{port: newFilePort(ln, disk, sandboxtest.Log(t)), staged: filepath.Join(dir, "staged"), room: room,
		guestDisk: guestDisk}
	t.Cleanup(ft.port.close)
	return ft
}

// fileModes are the ways a file crosses the port: in the frame, or through
// the stage disk.
var fileModes = []struct {
	name string
	disk bool
}{{"port", false}, {"disk", true}}

// guest plays QEMU and the guest: it dials the port and serves frames.
func (ft *fileTest) guest(t *testing.T) {
	t.Helper()
	conn, err := net.Dial("unix", ft.port.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	s := &vminit.FileServer{Dir: ft.staged, Log: sandboxtest.Log(t), Room: ft.room}
	if ft.guestDisk {
		s.Disk = func() (*os.File, func(), error) {
			f, err := os.Open(ft.port.disk)
			if err != nil {
				return nil, nil, err
			}
			return f, func() { f.Close() }, nil
		}
	}
	go func() { defer close(done); _ = s.Serve(ctx, conn) }()
	t.Cleanup(func() { cancel(); conn.Close(); <-done })
}

func artifact(t *testing.T, size int) (string, []byte) {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "artifact")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, b
}

func plentyOfRoom(string) (int64, error) { return 1 << 30, nil }

func TestFilePortStagesIntoGuestServer(t *testing.T) {
	for _, mode := range fileModes {
		t.Run(mode.name, func(t *testing.T) { testFilePortStages(t, mode.disk) })
	}
}

func testFilePortStages(t *testing.T, disk bool) {
	ft := newFileTestDisk(t, plentyOfRoom, disk, disk)
	ft.guest(t)
	// Concurrent pushes to one port are serialized; each file arrives whole.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			src, want := artifact(t, 2<<20+i*4099)
			name := fmt.Sprintf("f%d", i)
			path, n, err := ft.port.push(context.Background(), src, name)
			if err != nil {
				errs[i] = err
				return
			}
			if path != filepath.Join(ft.staged, name) || n != int64(len(want)) {
				errs[i] = fmt.Errorf("push = %q, %d", path, n)
				return
			}
			got, err := os.ReadFile(path)
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("%s differs from what was sent", name)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if ft.port.noDisk {
		t.Fatal("the port stopped using the stage disk")
	}
	if disk {
		// The disk's file gave its space back once the guest had the files.
		var st unix.Stat_t
		if err := unix.Stat(ft.port.disk, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != agentapi.MaxStagedSize || st.Blocks*512 > 1<<20 {
			t.Fatalf("stage disk: size %d, %d bytes allocated; want %d and no data left", st.Size, st.Blocks*512, agentapi.MaxStagedSize)
		}
	}
}

// A guest without the stage disk, and one from before it (which takes a
// frame naming the disk as an empty file), get the bytes in a frame, and
// the port stops naming the disk.
func TestFilePortDiskFallback(t *testing.T) {
	t.Run("no disk in the guest", func(t *testing.T) {
		ft := newFileTestDisk(t, plentyOfRoom, true, false)
		ft.guest(t)
		for i := range 2 {
			src, want := artifact(t, 300000)
			path, _, err := ft.port.push(context.Background(), src, "f")
			if err != nil {
				t.Fatalf("push %d: %v", i, err)
			}
			if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
				t.Fatalf("push %d: file differs", i)
			}
			if !ft.port.noDisk {
				t.Fatal("the port still names the disk after NoDisk")
			}
		}
	})
	t.Run("guest from before the disk", func(t *testing.T) {
		ft := newFileTestDisk(t, plentyOfRoom, true, false)
		got := ft.oldGuest(t, 2)
		src, _ := artifact(t, 5000)
		if _, _, err := ft.port.push(context.Background(), src, "f"); err != nil {
			t.Fatal(err)
		}
		if h := <-got; len(h) != 2 || h[0].DiskSize != 5000 || h[0].Size != 0 || h[1].Size != 5000 || h[1].DiskSize != 0 {
			t.Fatalf("frames %+v: want one naming the disk, then one with the bytes", h)
		}
	})
}

// oldGuest plays QEMU and, in the guest, an old /init (oldGuest below) for
// n frames; the headers it read come on the channel once it is done.
func (ft *fileTest) oldGuest(t *testing.T, n int) <-chan []agentapi.FileHeader {
	t.Helper()
	conn, err := net.Dial("unix", ft.port.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	got := make(chan []agentapi.FileHeader, 1)
	go func() { got <- oldGuest(conn, n) }()
	return got
}

// oldGuest answers n frames as an /init from before the stage disk did: it
// knows only Name and Size.
func oldGuest(conn net.Conn, n int) []agentapi.FileHeader {
	var hs []agentapi.FileHeader
	r := bufio.NewReader(conn)
	for range n {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return hs
		}
		var h agentapi.FileHeader
		_ = json.Unmarshal(line, &h)
		hs = append(hs, h)
		if _, err := io.CopyN(io.Discard, r, h.Size); err != nil {
			return hs
		}
		fmt.Fprintf(conn, "{\"path\":\"/tmp/staged/%s\"}\n", h.Name)
	}
	return hs
}

func TestFilePortGuestRefusal(t *testing.T) {
	for _, mode := range fileModes {
		t.Run(mode.name, func(t *testing.T) { testFilePortGuestRefusal(t, mode.disk) })
	}
}

func testFilePortGuestRefusal(t *testing.T, disk bool) {
	ft := newFileTestDisk(t, func(string) (int64, error) { return 1 << 20, nil }, disk, disk)
	ft.guest(t)
	src, _ := artifact(t, 2<<20)
	_, _, err := ft.port.push(context.Background(), src, "big")
	var refused *refusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "does not fit") || !errors.Is(err, sandbox.ErrNoRoom) {
		t.Fatalf("push = %v, want the guest's refusal, ErrNoRoom", err)
	}
	// The port stays in step after a refusal.
	small, want := artifact(t, 1000)
	path, _, err := ft.port.push(context.Background(), small, "small")
	if err != nil {
		t.Fatalf("push after a refusal: %v", err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Fatal("file after a refusal differs")
	}
}

// Unstage's frame: the guest deletes the file and only that, a file
// already gone is no error, and the port stays usable. A guest from before
// the delete frame takes it as a file of 0 bytes, which frees the memory
// all the same.
func TestFilePortRemove(t *testing.T) {
	ft := newFileTestDisk(t, plentyOfRoom, true, true)
	ft.guest(t)
	ctx := context.Background()
	src, _ := artifact(t, 70000)
	for _, name := range []string{"a", "b"} {
		if _, _, err := ft.port.push(ctx, src, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := ft.port.remove(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := ft.port.remove(ctx, "a"); err != nil {
		t.Fatalf("removing a file already gone: %v", err)
	}
	if err := ft.port.remove(ctx, "../b"); err == nil || !strings.Contains(err.Error(), "staged file name") {
		t.Fatalf("remove(../b) = %v, want a name error", err)
	}
	if _, err := os.Stat(filepath.Join(ft.staged, "a")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a after its removal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(ft.staged, "b")); err != nil {
		t.Fatalf("b, not removed: %v", err)
	}
	if _, _, err := ft.port.push(ctx, src, "c"); err != nil {
		t.Fatalf("push after the removals: %v", err)
	}

	old := newFileTest(t, plentyOfRoom)
	got := old.oldGuest(t, 1)
	if err := old.port.remove(ctx, "a"); err != nil {
		t.Fatalf("remove on a guest from before it: %v", err)
	}
	if h := <-got; len(h) != 1 || h[0].Name != "a" || h[0].Size != 0 {
		t.Fatalf("frames %+v: want one of 0 bytes named a", h)
	}
}

func TestFilePortBadName(t *testing.T) {
	ft := newFileTest(t, plentyOfRoom)
	src, _ := artifact(t, 10)
	for _, name := range []string{"", "..", "../x", "a/b", ".hidden"} {
		if _, _, err := ft.port.push(context.Background(), src, name); err == nil || !strings.Contains(err.Error(), "staged file name") {
			t.Errorf("push(%q) = %v, want a name error", name, err)
		}
	}
	// Nothing was sent: QEMU's connection was never even taken.
	if ft.port.conn != nil {
		t.Fatal("a bad name reached the port")
	}
}

// A guest that stops reading must not hold the deploy: the transfer gives
// up at its deadline, the port is done with, and the next push fails at
// once (the node then streams over NATS).
func TestFilePortGuestStopsReading(t *testing.T) {
	ft := newFileTest(t, plentyOfRoom)
	ft.port.timeout = func(int64) time.Duration { return 300 * time.Millisecond }
	conn, err := net.Dial("unix", ft.port.ln.Addr().String()) // connected, never read
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src, _ := artifact(t, 16<<20) // far more than the socket buffers
	_, _, err = ft.port.push(context.Background(), src, "stuck")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("push to a guest that does not read = %v, want a timeout", err)
	}
	if _, _, err := ft.port.push(context.Background(), src, "again"); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("push after a cut-off frame = %v, want the port unusable", err)
	}
	// The host hung up, which tells the guest the frame is void.
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	if _, err := bufio.NewReader(conn).Discard(32 << 20); err == nil {
		t.Fatal("the port's connection stayed open after a cut-off frame")
	}
}

// The deploy's context bounds a transfer too: a deploy that is given up
// ends its transfer at once, well before the transfer's own deadline.
func TestFilePortContextEndsTransfer(t *testing.T) {
	ft := newFileTest(t, plentyOfRoom)
	ft.port.timeout = func(int64) time.Duration { return time.Hour }
	conn, err := net.Dial("unix", ft.port.ln.Addr().String()) // connected, never read
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	src, _ := artifact(t, 16<<20)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { _, _, err := ft.port.push(ctx, src, "given-up"); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("push whose deploy was given up = %v, want context.Canceled", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("push went on after its context ended")
	}
	if _, _, err := ft.port.push(context.Background(), src, "after"); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("push after a cut-off frame = %v, want the port unusable", err)
	}
	// A context that has already ended sends nothing.
	if _, _, err := ft.port.push(ctx, src, "late"); !errors.Is(err, context.Canceled) {
		t.Fatalf("push with an ended context = %v", err)
	}
}

func TestFilePortVMEnded(t *testing.T) {
	ft := newFileTest(t, plentyOfRoom)
	ft.port.close()
	src, _ := artifact(t, 10)
	if _, _, err := ft.port.push(context.Background(), src, "late"); err == nil || !strings.Contains(err.Error(), "ended") {
		t.Fatalf("push after the vm ended = %v", err)
	}
}

func TestSendFileShortSource(t *testing.T) {
	var w bytes.Buffer
	_, err := sendFile(&w, bufio.NewReader(strings.NewReader("")), agentapi.FileHeader{Name: "x"}, 100, bytes.NewReader(make([]byte, 60)))
	if err == nil || !strings.Contains(err.Error(), "60 of 100") {
		t.Fatalf("sendFile with a short source = %v", err)
	}
	var refused *refusedError
	if errors.As(err, &refused) {
		t.Fatal("a short source must break the port, not count as a refusal")
	}
	if !strings.HasPrefix(w.String(), `{"name":"x","size":100}`+"\n") {
		t.Fatalf("frame header = %q", w.String()[:min(40, w.Len())])
	}
}

func TestStageTimeoutGrowsWithSize(t *testing.T) {
	if small, big := stageTimeout(0), stageTimeout(agentapi.MaxStagedSize); small != stageBaseTimeout || big <= small {
		t.Fatalf("stageTimeout(0) = %s, stageTimeout(max) = %s", small, big)
	}
}

// push is send of a file with nothing in its header but its name.
func (p *filePort) push(ctx context.Context, src, name string) (string, int64, error) {
	return p.send(ctx, agentapi.FileHeader{Name: name}, src)
}
