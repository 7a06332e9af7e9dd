package qemu

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// requireQEMU skips tests that run the real QEMU binary where it is missing.
func requireQEMU(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath(DefaultBinary)
	if err != nil {
		t.Skipf("%s not installed (apt-get install -y qemu-system-x86); skipping a test that runs it", DefaultBinary)
	}
	return bin
}

// startPaused runs a microvm that never starts its CPU (-S), with QMP on
// an inherited listening socket as the driver runs it: enough to talk QMP
// to a real QEMU without a guest image.
func startPaused(t *testing.T) (qmpPath string, cmd *exec.Cmd) {
	t.Helper()
	bin := requireQEMU(t)
	v := &vm{dir: t.TempDir()}
	if err := v.listenQMP(); err != nil {
		t.Fatal(err)
	}
	defer v.closeInherited()
	cmd = exec.Command(bin, append([]string{"-M", "microvm", "-m", "32", "-nodefaults", "-no-user-config",
		"-nographic", "-accel", "tcg", "-S"}, qmpArgs()...)...)
	cmd.Dir = v.dir
	cmd.ExtraFiles = []*os.File{v.qmpFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return v.path(qmpSock), cmd
}

func TestQMPAgainstQEMU(t *testing.T) {
	path, cmd := startPaused(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	q, err := dialQMP(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := q.exec(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Running || st.Status != "prelaunch" {
		t.Fatalf("status of a -S machine = %+v, want prelaunch, not running", st)
	}

	var qerr *QMPError
	err = q.exec(ctx, "no-such-command", nil, nil)
	if !errors.As(err, &qerr) || qerr.Class != "CommandNotFound" {
		t.Fatalf("unknown command: err = %v, want a QMPError of class CommandNotFound", err)
	}

	if err := q.setCapability(ctx, "x-ignore-shared", true); err != nil {
		t.Fatal(err)
	}
	var caps []struct {
		Capability string `json:"capability"`
		State      bool   `json:"state"`
	}
	if err := q.exec(ctx, "query-migrate-capabilities", nil, &caps); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range caps {
		if c.Capability == "x-ignore-shared" {
			found = c.State
		}
	}
	if !found {
		t.Fatalf("x-ignore-shared not on after setCapability: %+v", caps)
	}

	// A file passed over QMP (as a template's state is saved) takes a
	// migration: the stream's magic is there once it completes.
	if err := q.exec(ctx, "migrate", map[string]string{"uri": "fd:state"}, nil); err == nil {
		t.Fatal("migrate to an fd not passed yet: no error")
	}
	state := filepath.Join(t.TempDir(), "state")
	f, err := os.Create(state)
	if err != nil {
		t.Fatal(err)
	}
	err = q.passFD(ctx, "state", f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if err := q.exec(ctx, "migrate", map[string]string{"uri": "fd:state"}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := q.migration(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Status == "completed" {
			break
		}
		if m.Status == "failed" || m.Status == "cancelled" {
			t.Fatalf("migration to the passed fd: %+v", m)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if b, _ := os.ReadFile(state); !strings.HasPrefix(string(b), "QEVM") {
		t.Fatalf("state file after the migration: %d bytes, %.8q; want QEMU's stream", len(b), b)
	}

	if err := q.exec(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("qemu after quit: %v", err)
	}
}

// TestQMPDial: a socket nobody listens on fails at once (QEMU, which
// holds the listening socket, has gone); one whose QEMU never greets waits
// for the context.
func TestQMPDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := dialQMP(ctx, filepath.Join(t.TempDir(), "missing.sock")); err == nil || ctx.Err() != nil {
		t.Fatalf("dial of a missing socket: %v after %v; want an error at once", err, ctx.Err())
	}

	v := &vm{dir: t.TempDir()}
	if err := v.listenQMP(); err != nil {
		t.Fatal(err)
	}
	defer v.closeInherited() // a listening socket that never accepts: a QEMU still starting
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := dialQMP(ctx, v.path(qmpSock)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial of a QEMU that never greets: %v, want deadline exceeded", err)
	}
}

// TestQMPWaitEvent: an event QEMU sends while a command runs is not lost
// to a later wait for it, and a wait ends when the event comes.
func TestQMPWaitEvent(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		r := bufio.NewReader(server)
		for _, out := range []string{
			`{"event":"STOP"}` + "\n" + `{"return":{}}` + "\n",
			`{"return":{}}` + "\n" + `{"event":"RESUME"}` + "\n",
		} {
			if _, err := r.ReadString('\n'); err != nil {
				return
			}
			io.WriteString(server, out)
		}
		io.Copy(io.Discard, r)
	}()
	q := &qmp{conn: client, r: bufio.NewReader(client)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.exec(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.waitEvent(ctx, "STOP"); err != nil {
		t.Fatalf("STOP came with the command's reply: %v", err)
	}
	if err := q.exec(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := q.waitEvent(ctx, "RESUME"); err != nil {
		t.Fatalf("RESUME came after the reply: %v", err)
	}
	short, cancel2 := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel2()
	if err := q.waitEvent(short, "SHUTDOWN"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for an event that never comes: %v, want deadline exceeded", err)
	}
}

// TestStopAndExitErrors runs the driver's process handling against real
// QEMU processes that need no guest image: one that fails at once (its
// kernel is missing), one that is stopped.
func TestStopAndExitErrors(t *testing.T) {
	requireQEMU(t)
	d, err := New(Config{Kernel: "/nonexistent/vmlinux", Initrd: "/nonexistent/initrd", Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	spec := sandbox.Spec{
		ID:    "vmfail",
		Dir:   t.TempDir(),
		Agent: agentapi.Metadata{SandboxID: "vmfail", NATSURL: "nats://127.0.0.1:4222", Seed: "SUTEST"},
	}
	ctx := context.Background()
	sb, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-sb.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("qemu with a missing kernel did not exit")
	}
	if err := sb.Err(); err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinux") {
		t.Fatalf("Err = %v, want QEMU's complaint about the missing kernel", err)
	}
	if b, err := os.ReadFile(filepath.Join(spec.Dir, sandbox.PIDFile)); err != nil || strings.TrimSpace(string(b)) == "" {
		t.Fatalf("pid file: %q, %v", b, err)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatalf("Stop after exit: %v", err)
	}

	// A QEMU that keeps running (paused before its first instruction).
	v := d.newVM("vmstop", t.TempDir(), Shape{VCPU: 1, MemoryMiB: 32})
	v.args = append([]string{"-M", "microvm", "-m", "32", "-nodefaults", "-no-user-config", "-nographic",
		"-accel", "tcg", "-S"}, qmpArgs()...)
	if err := v.listenQMP(); err != nil {
		t.Fatal(err)
	}
	if err := v.launch(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-v.Done():
		t.Fatalf("paused qemu exited: %v", v.Err())
	case <-time.After(100 * time.Millisecond):
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(v.Err(), sandbox.ErrStopped) {
		t.Fatalf("Err after Stop = %v, want ErrStopped", v.Err())
	}
	if err := v.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestTemplateFailure: a template that cannot boot costs a cold boot, its
// failure is remembered with QEMU's own reason, and no half-made template
// is left behind.
func TestTemplateFailure(t *testing.T) {
	requireQEMU(t)
	snaps := t.TempDir()
	kernel := filepath.Join(t.TempDir(), "vmlinux")
	initrd := filepath.Join(t.TempDir(), "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("not a kernel"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d, err := New(Config{Kernel: kernel, Initrd: initrd, Snapshot: true, SnapshotDir: snaps,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	spec := sandbox.Spec{ID: "clone1", Dir: t.TempDir(),
		Agent: agentapi.Metadata{SandboxID: "clone1", NATSURL: "nats://127.0.0.1:4222", Seed: "SUTEST"}}
	// The template's QEMU exits; the start falls back to a cold boot,
	// whose QEMU exits too (the kernel is no kernel), and says why.
	sb, err := d.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("a template that cannot be built must cost a cold boot, not the start: %v", err)
	}
	defer sb.Stop(context.Background())
	if sb.(*vm).clone != nil {
		t.Fatal("restored a clone of a template that could not be built")
	}
	select {
	case <-sb.Done():
	case <-time.After(time.Minute):
		t.Fatal("the cold boot of no kernel did not end")
	}
	if err := sb.Err(); err == nil || !strings.Contains(err.Error(), "qemu exited") {
		t.Fatalf("cold boot of no kernel: %v; want QEMU's exit", err)
	}
	_, err = d.template(context.Background(), d.shapeOf(spec))
	if !errors.Is(err, errTemplateFailed) || !strings.Contains(err.Error(), "qemu exited") {
		t.Fatalf("the template failure was not remembered with its reason: %v", err)
	}
	if left, _ := os.ReadDir(snaps); len(left) != 0 {
		t.Fatalf("snapshot dir keeps %d entries after a failed template", len(left))
	}
}
