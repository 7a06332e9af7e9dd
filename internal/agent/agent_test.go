package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// These tests run the agent in-process against a real internal server; the
// sandbox conformance suite runs it as `nex agent` in every driver.

const timeout = 20 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

// runAgent runs agent.Run for a until the test ends; the channel gets Run's
// result.
func runAgent(t *testing.T, ctx context.Context, a *sandboxtest.Agent, o agent.Options) <-chan error {
	t.Helper()
	o.Meta = a.Meta
	if o.WorkDir == "" {
		o.WorkDir = t.TempDir()
	}
	if testing.Verbose() {
		o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("sandbox", a.ID)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	ended := make(chan struct{})
	go func() {
		done <- agent.Run(ctx, o)
		close(ended)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-ended:
		case <-time.After(timeout):
			t.Error("agent.Run did not return after its context ended")
		}
	})
	return done
}

func waitRun(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		t.Fatal("agent.Run did not return")
		return nil
	}
}

// shell deploys /bin/sh -c script; the process sandbox allows dynamic binaries.
func shell(t *testing.T, a *sandboxtest.Agent, id, script string) agentapi.Reply {
	t.Helper()
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.Deploy(testCtx(t), agentapi.Deploy{WorkloadID: id, Name: "sh", Type: "native", Argv: []string{"-c", script},
		NATSUser: "wl_user", NATSPassword: "p@ss/word"}, sh)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestContextEndIsAnUndeploy(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("ctx1")
	ctx, cancel := context.WithCancel(testCtx(t))
	done := runAgent(t, ctx, a, agent.Options{WorkloadNATSAddr: "127.0.0.1:4222"})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r := shell(t, a, "w1", `trap 'echo bye; exit 0' TERM; echo "$NATS_URL"; while :; do sleep 0.05; done`); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	// WorkloadNATSAddr wins over the agent's own address; credentials are
	// escaped into the URL.
	if err := a.WaitLog(testCtx(t), "stdout", "nats://wl_user:p%40ss%2Fword@127.0.0.1:4222"); err != nil {
		t.Fatal(err)
	}
	// A second deploy into the same sandbox is refused.
	if r := shell(t, a, "w2", "true"); r.OK || !strings.Contains(r.Error, "already has a workload") {
		t.Fatalf("second deploy = %+v", r)
	}
	// Triggers have no function to call in a native workload.
	msg, err := h.Node.RequestWithContext(testCtx(t), agentapi.TriggerSubject(a.ID), []byte("x"))
	if err != nil || !strings.Contains(string(msg.Data), "no function workload") {
		t.Fatalf("trigger = %v, %v", msg, err)
	}
	cancel()
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v; want nil when its context ends", err)
	}
	e, err := a.WaitEvent(testCtx(t), agentapi.EventWorkloadExited)
	if err != nil || e.WorkloadID != "w1" || e.Code != 0 {
		t.Fatalf("exit event = %+v, %v", e, err)
	}
	if err := a.WaitLog(testCtx(t), "stdout", "bye"); err != nil {
		t.Fatal(err)
	}
}

func TestUndeployWithoutWorkloadEnds(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("idle1")
	done := runAgent(t, testCtx(t), a, agent.Options{})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Undeploy(testCtx(t), "not needed"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatal(err)
	}
	if ev := a.Events(); len(ev) != 0 {
		t.Fatalf("events without a workload: %+v", ev)
	}
}

func TestUndeployReplyComesBeforeExitEvent(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("order1")
	// Record the order in which the node sees the reply and the event.
	var order []string
	seen := make(chan string, 4)
	sub, err := h.Node.Subscribe(agentapi.EventsSubject(a.ID), func(m *nats.Msg) {
		var e agentapi.Event
		_ = json.Unmarshal(m.Data, &e)
		seen <- e.Type
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := h.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	done := runAgent(t, testCtx(t), a, agent.Options{})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r := shell(t, a, "w1", `echo up; exec sleep 600`); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	if got := <-seen; got != agentapi.EventWorkloadStarted {
		t.Fatalf("first event %q", got)
	}
	if r, err := a.Undeploy(testCtx(t), "test"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	order = append(order, "reply")
	order = append(order, <-seen)
	if strings.Join(order, ",") != "reply,"+agentapi.EventWorkloadExited {
		t.Fatalf("order = %v", order)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatal(err)
	}
	if e, _ := a.WaitEvent(testCtx(t), agentapi.EventWorkloadExited); e.Code != 128+15 {
		t.Fatalf("exit = %+v; want killed by SIGTERM", e)
	}
}

func TestLostConnectionIsAnError(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("lost1")
	done := runAgent(t, testCtx(t), a, agent.Options{})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if r := shell(t, a, "w1", `echo $$ > `+dir+`/pid; exec sleep 600`); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	// Revoking the agent's user closes its connection; its reconnects are
	// refused, so the connection is gone for good.
	h.Server.RemoveAgent(a.ID)
	err := waitRun(t, done)
	if err == nil || !strings.Contains(err.Error(), "connection to node closed") {
		t.Fatalf("Run = %v; want a closed-connection error", err)
	}
	// The workload did not outlive its agent.
	b, _ := os.ReadFile(dir + "/pid")
	pid := strings.TrimSpace(string(b))
	if _, err := os.Stat("/proc/" + pid); pid == "" || !errors.Is(err, os.ErrNotExist) {
		stat, _ := os.ReadFile("/proc/" + pid + "/stat")
		if !strings.Contains(string(stat), ") Z") {
			t.Fatalf("workload %q still running after Run returned", pid)
		}
	}
}

func TestHandshakeRefused(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddMuteAgent("refused1")
	sub, err := h.Node.Subscribe(agentapi.HandshakeSubject(a.ID), func(m *nats.Msg) {
		b, _ := json.Marshal(agentapi.HandshakeReply{Error: "unknown sandbox"})
		_ = m.Respond(b)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := h.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	var handshaken atomic.Int32
	err = waitRun(t, runAgent(t, testCtx(t), a, agent.Options{Handshaken: func() { handshaken.Add(1) }}))
	if err == nil || !strings.Contains(err.Error(), "unknown sandbox") {
		t.Fatalf("Run = %v; want the node's refusal", err)
	}
	if n := handshaken.Load(); n != 0 {
		t.Fatalf("Handshaken called %d times after a refused handshake", n)
	}
}

func TestHandshakeRetriedUntilNodeListens(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddMuteAgent("late1")
	var handshaken atomic.Int32
	done := runAgent(t, testCtx(t), a, agent.Options{Handshaken: func() { handshaken.Add(1) }})
	// The agent asks, and asks again when nobody answers (the mute agent
	// only records).
	err := poll(testCtx(t), func() bool { return len(a.Handshakes()) >= 2 })
	if err != nil {
		t.Fatalf("handshake not retried: %d attempts", len(a.Handshakes()))
	}
	if n := handshaken.Load(); n != 0 {
		t.Fatalf("Handshaken called %d times before the node answered", n)
	}
	answered := make(chan struct{}, 10)
	sub, err := h.Node.Subscribe(agentapi.HandshakeSubject(a.ID), func(m *nats.Msg) {
		b, _ := json.Marshal(agentapi.HandshakeReply{OK: true, Now: time.Now()})
		_ = m.Respond(b)
		answered <- struct{}{}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := h.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	<-answered
	if err := poll(testCtx(t), func() bool { return handshaken.Load() > 0 }); err != nil {
		t.Fatal("Handshaken not called after the node answered")
	}
	if r, err := a.Undeploy(testCtx(t), ""); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatalf("Run = %v; want nil after an accepted handshake and an undeploy", err)
	}
	if n := handshaken.Load(); n != 1 {
		t.Fatalf("Handshaken called %d times; want once, after the accepted handshake", n)
	}
}

func poll(ctx context.Context, cond func() bool) error {
	for !cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func TestUnansweredAgentEnds(t *testing.T) {
	cases := []struct {
		name    string
		end     func(h *sandboxtest.Harness, a *sandboxtest.Agent) error
		wantErr bool
	}{
		{"undeployed", func(_ *sandboxtest.Harness, a *sandboxtest.Agent) error {
			r, err := a.Undeploy(context.Background(), "never mind")
			if err == nil && !r.OK {
				err = errors.New(r.Error)
			}
			return err
		}, false},
		{"revoked", func(h *sandboxtest.Harness, a *sandboxtest.Agent) error {
			h.Server.RemoveAgent(a.ID)
			return nil
		}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := sandboxtest.NewHarness(t)
			a := h.AddMuteAgent("mute-" + c.name)
			done := runAgent(t, testCtx(t), a, agent.Options{})
			if _, err := a.WaitHandshake(testCtx(t)); err != nil {
				t.Fatal(err)
			}
			if err := c.end(h, a); err != nil {
				t.Fatal(err)
			}
			if err := waitRun(t, done); (err != nil) != c.wantErr {
				t.Fatalf("Run = %v; want error: %v", err, c.wantErr)
			}
		})
	}
}

func TestBadOptions(t *testing.T) {
	if err := agent.Run(context.Background(), agent.Options{}); err == nil {
		t.Fatal("Run without metadata succeeded")
	}
}

// A deploy deletes the files its Unstage lists (staged ahead for another
// artifact, maybe another namespace's; they would also take a VM's RAM for
// as long as the workload runs), in the staged directory only: a deploy
// that lists anything else is refused, and other staged files stay.
func TestDeployUnstages(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	staged, elsewhere := t.TempDir(), t.TempDir()
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	own, ahead, other, outside := filepath.Join(staged, "own"), filepath.Join(staged, "ahead"),
		filepath.Join(staged, "other"), filepath.Join(elsewhere, "outside")
	for _, p := range []string{own, ahead, other, outside} {
		if err := os.WriteFile(p, sh, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	deploy := func(a *sandboxtest.Agent, unstage ...string) agentapi.Reply {
		t.Helper()
		r, err := a.Deploy(testCtx(t), agentapi.Deploy{WorkloadID: "w1", Name: "sh", Type: "native", Argv: []string{"-c", "echo staged ran"},
			Hash: "00", Size: int64(len(sh)), StagedPath: own, Unstage: unstage}, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	refused := h.AddAgent("staged0")
	runAgent(t, testCtx(t), refused, agent.Options{StagedDir: staged})
	if _, err := refused.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r := deploy(refused, ahead, outside); r.OK || !strings.Contains(r.Error, "not in the staged directory") {
		t.Fatalf("deploy unstaging a file outside the staged directory: %+v", r)
	}
	for _, p := range []string{ahead, outside} { // checked before anything is removed
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("a refused deploy removed %s: %v", p, err)
		}
	}

	a := h.AddAgent("staged1")
	runAgent(t, testCtx(t), a, agent.Options{StagedDir: staged})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r := deploy(a, ahead); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	if err := a.WaitLog(testCtx(t), "stdout", "staged ran"); err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]bool{own: false, ahead: false, other: true, outside: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists %v, want %v", p, err == nil, want)
		}
	}
}

// TestDeployChecksRoomFirst: an artifact that Options.CheckRoom refuses is
// not fetched; the deploy fails with the refusal.
func TestDeployChecksRoomFirst(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("room")
	work := t.TempDir()
	var asked atomic.Int64
	runAgent(t, testCtx(t), a, agent.Options{WorkDir: work, CheckRoom: func(size int64) error {
		asked.Store(size)
		return errors.New("a 4 KiB file does not fit")
	}})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	r, err := a.Deploy(testCtx(t), agentapi.Deploy{WorkloadID: "w1", Name: "big", Type: "native"}, make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || r.Error != "fetch artifact: a 4 KiB file does not fit" || asked.Load() != 4096 {
		t.Fatalf("deploy: %+v (CheckRoom asked for %d bytes); want the refusal, for 4096", r, asked.Load())
	}
	if left, _ := os.ReadDir(work); len(left) != 0 {
		t.Fatalf("work dir holds %v after the refusal", left)
	}
}

// TestDeployingComesFirst: Options.Deploying runs when a deploy comes,
// before its workload starts (the workload finds what it did), and not for
// a deploy its first checks refuse.
func TestDeployingComesFirst(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("deploying")
	mark := filepath.Join(t.TempDir(), "prepared")
	var calls atomic.Int32
	runAgent(t, testCtx(t), a, agent.Options{Deploying: func() {
		calls.Add(1)
		if err := os.WriteFile(mark, nil, 0o600); err != nil {
			t.Error(err)
		}
	}})
	if _, err := a.WaitHandshake(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	r, err := a.Deploy(testCtx(t), agentapi.Deploy{WorkloadID: "w0", Name: "../sh", Type: "native"}, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || calls.Load() != 0 {
		t.Fatalf("deploy of a bad name: %+v, Deploying called %d times; want a refusal, before it", r, calls.Load())
	}
	if r := shell(t, a, "w1", "test -f "+mark+" && echo prepared first"); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	if err := a.WaitLog(testCtx(t), "stdout", "prepared first"); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("Deploying called %d times for one deploy", n)
	}
}
