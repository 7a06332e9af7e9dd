// Package e2e drives the built nex binary as a user would: node up on the
// embedded NATS, node ls, devrun of the echo service, a request to it, logs,
// stop, and a graceful shutdown.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// node is a `nex node up` process and its log.
type node struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	log  bytes.Buffer
	done chan error
}

func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *node) waitLog(t *testing.T, substr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if strings.Contains(n.logText(), substr) {
			return
		}
		select {
		case err := <-n.done:
			t.Fatalf("node exited (%v) before logging %q:\n%s", err, substr, n.logText())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("node did not log %q within %s:\n%s", substr, d, n.logText())
}

type env struct {
	t    *testing.T
	dir  string
	nex  string
	home string
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	home := filepath.Join(dir, "home")
	_ = os.MkdirAll(home, 0o700)
	return &env{t: t, dir: dir, nex: sandboxtest.BuildNex(t), home: home}
}

func (e *env) command(args ...string) *exec.Cmd {
	cmd := exec.Command(e.nex, args...)
	cmd.Dir = e.dir
	cmd.Env = []string{"HOME=" + e.home, "PATH=" + os.Getenv("PATH")}
	return cmd
}

// run runs a CLI command to completion and returns its stdout.
func (e *env) run(args ...string) string {
	e.t.Helper()
	cmd := e.command(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Fatalf("nex %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func (e *env) startNode(args ...string) *node {
	e.t.Helper()
	n := &node{cmd: e.command(append([]string{"node", "up"}, args...)...), done: make(chan error, 1)}
	pr, pw, _ := os.Pipe()
	n.cmd.Stdout, n.cmd.Stderr = pw, pw
	if err := n.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	pw.Close()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			n.mu.Lock()
			n.log.WriteString(sc.Text() + "\n")
			n.mu.Unlock()
		}
	}()
	go func() { n.done <- n.cmd.Wait() }()
	e.t.Cleanup(func() {
		if n.cmd.ProcessState == nil {
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	})
	return n
}

func requirePortFree(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err == nil {
		c.Close()
		t.Fatalf("%s is in use: this test checks that `nex node up` starts an embedded NATS there when none runs; stop what listens on it", addr)
	}
}

func TestNodeUpLsDevrunEchoStop(t *testing.T) {
	requirePortFree(t, "127.0.0.1:4222")
	e := newEnv(t)
	echoBin := filepath.Join(e.dir, "echoservice")
	build := exec.Command("go", "build", "-o", echoBin, "./examples/echoservice")
	build.Dir = moduleRoot(t)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build echoservice: %v\n%s", err, out)
	}

	n := e.startNode("--data-dir", filepath.Join(e.dir, "data"), "--sandbox", "process", "--pool-size", "1")
	n.waitLog(t, "Adding new sandbox to warm pool", 60*time.Second)
	// The seed's start-up lines, in the seed's order.
	logText := n.logText()
	last := -1
	for _, line := range []string{"started an embedded one", "Established node NATS connection", "Loaded node configuration",
		"Internal NATS server started", "Use this key as the recipient for encrypted run requests\" public_xkey=X",
		"NATS execution engine awaiting commands\" id=N", "Machine started", "Received agent handshake"} {
		i := strings.Index(logText, line)
		if i < 0 || i < last {
			t.Fatalf("log line %q missing or out of order:\n%s", line, logText)
		}
		last = i
	}

	// node ls, as a separate process: the table and JSON.
	table := e.run("node", "ls")
	var ids []api.PingResponse
	if err := json.Unmarshal([]byte(e.run("node", "ls", "--json")), &ids); err != nil || len(ids) != 1 {
		t.Fatalf("node ls --json: %v %v", ids, err)
	}
	nodeID := ids[0].NodeID
	if !strings.Contains(table, "NATS Execution Nodes") || !strings.Contains(table, nodeID) {
		t.Fatalf("node ls table:\n%s", table)
	}
	if info := e.run("node", "info", nodeID); !strings.Contains(info, ids[0].TargetXkey) {
		t.Fatalf("node info does not show the xkey:\n%s", info)
	}

	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	logs := make(chan api.LogEntry, 100)
	sub, _ := nc.Subscribe("$NEX.logs.default.>", func(m *nats.Msg) {
		var l api.LogEntry
		if json.Unmarshal(m.Data, &l) == nil {
			logs <- l
		}
	})
	defer sub.Unsubscribe()
	events := make(chan api.CloudEvent, 100)
	esub, _ := nc.Subscribe("$NEX.events.>", func(m *nats.Msg) {
		var ev api.CloudEvent
		if json.Unmarshal(m.Data, &ev) == nil {
			events <- ev
		}
	})
	defer esub.Unsubscribe()
	_ = nc.Flush()

	// devrun the echo service; a request on svc.echo gets the echo.
	var run struct {
		ID   string `json:"id"`
		Node string `json:"node_id"`
	}
	out := e.run("devrun", "--json", echoBin)
	if err := json.Unmarshal([]byte(out), &run); err != nil || run.ID == "" {
		t.Fatalf("devrun output %q: %v", out, err)
	}
	var reply *nats.Msg
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if reply, err = nc.Request("svc.echo", []byte("hello"), 500*time.Millisecond); err == nil {
			break
		}
	}
	if err != nil || string(reply.Data) != "hello" {
		t.Fatalf("svc.echo: %v", err)
	}
	select {
	case l := <-logs:
		if l.WorkloadID != run.ID || l.NodeID != nodeID {
			t.Fatalf("log entry %+v", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no log line from the echo service")
	}
	if !strings.Contains(e.run("node", "ls"), "│         1 │") {
		t.Fatal("node ls does not count the workload")
	}
	pidsBefore := childPIDs(n.cmd.Process.Pid)

	// stop: no responders, and the sandbox processes are gone.
	e.run("stop", nodeID, run.ID)
	if _, err := nc.Request("svc.echo", []byte("x"), time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after stop: %v", err)
	}
	gone := 0
	for _, pid := range pidsBefore {
		if syscall.Kill(pid, 0) != nil {
			gone++
		}
	}
	if gone == 0 {
		t.Fatalf("no sandbox process ended after stop (children before: %v, now: %v)", pidsBefore, childPIDs(n.cmd.Process.Pid))
	}

	// SIGTERM: graceful stop, exit 0, node_stopped.
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n.done:
		if err != nil {
			t.Fatalf("node exit: %v\n%s", err, n.logText())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("node did not stop on SIGTERM")
	}
	// The embedded server went down with the node; the event was flushed before.
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Type == api.EventNodeStopped {
				var st api.NodeStoppedEvent
				_ = json.Unmarshal(ev.Data, &st)
				if !st.Graceful || st.ID != nodeID {
					t.Fatalf("node_stopped %+v", st)
				}
				if left := childPIDs(n.cmd.Process.Pid); len(left) > 0 {
					t.Fatalf("processes left: %v", left)
				}
				return
			}
		case <-timeout:
			t.Fatal("no node_stopped event")
		}
	}
}

func TestNodeLsWithoutNodes(t *testing.T) {
	e := newEnv(t)
	// A server with no node on it.
	cmd := e.command("node", "ls", "--server", "nats://127.0.0.1:1")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nats://127.0.0.1:1") {
		t.Fatalf("node ls against nothing: %v\n%s", err, out)
	}
}

func TestNodeLsWithNoNodeRunning(t *testing.T) {
	e := newEnv(t)
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Shutdown()
	out, err := e.command("node", "ls", "-s", cp.ClientURL()).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no nex nodes answered on "+cp.ClientURL()) ||
		!strings.Contains(string(out), "nex node up") || strings.Contains(string(out), "no responders") {
		t.Fatalf("want the friendly error, got %v:\n%s", err, out)
	}
}

func TestExplicitServerNeverFallsBack(t *testing.T) {
	e := newEnv(t)
	cmd := e.command("node", "up", "--server", "nats://127.0.0.1:1", "--data-dir", filepath.Join(e.dir, "data"), "--sandbox", "process")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "cannot reach NATS at nats://127.0.0.1:1") {
		t.Fatalf("want a clear error naming the URL, got %v:\n%s", err, out)
	}
}

func TestBadConfigRefusedAtStart(t *testing.T) {
	e := newEnv(t)
	cfg := filepath.Join(e.dir, "bad.json")
	_ = os.WriteFile(cfg, []byte(`{"machine_pool_size": 2, "sandbox": "docker", "colour": "blue"}`), 0o644)
	out, err := e.command("node", "up", "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `unknown field "colour"`) || strings.Contains(string(out), "panic") {
		t.Fatalf("want the unknown field named, got %v:\n%s", err, out)
	}
}

func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// childPIDs lists the direct children of pid (from every thread).
func childPIDs(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(filepath.Join("/proc", itoa(pid), "task", "*", "children"))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			out = append(out, atoi(s))
		}
	}
	return out
}
