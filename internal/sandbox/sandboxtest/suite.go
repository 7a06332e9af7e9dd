// Package sandboxtest is the conformance suite every sandbox driver must
// pass. It runs a real internal NATS server, plays the node's side of the
// agent protocol itself (Harness), and drives real sandboxes through their
// whole life: handshake, ping, deploy of a real workload, logs and events,
// undeploy, stop, and death from outside.
package sandboxtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Option tunes the suite for a driver.
type Option func(*config)

type config struct {
	timeout    time.Duration
	concurrent int
}

// WithTimeout sets how long each step may take (default 30 s); VM drivers
// under emulation need more.
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithConcurrency sets how many sandboxes the concurrency test starts at
// once (default 3).
func WithConcurrency(n int) Option { return func(c *config) { c.concurrent = n } }

// suite is the state shared by the tests of one Run.
type suite struct {
	cfg       config
	newDriver func(t *testing.T) sandbox.Driver
	h         *Harness
	workload  []byte
	seq       int
	mu        sync.Mutex
}

// Run runs the conformance suite against the drivers newDriver returns (one
// per test).
func Run(t *testing.T, newDriver func(t *testing.T) sandbox.Driver, opts ...Option) {
	cfg := config{timeout: 30 * time.Second, concurrent: 3}
	for _, o := range opts {
		o(&cfg)
	}
	wl, err := os.ReadFile(BuildWorkload(t))
	if err != nil {
		t.Fatal(err)
	}
	s := &suite{cfg: cfg, newDriver: newDriver, h: NewHarness(t), workload: wl}
	tests := []struct {
		name string
		run  func(*testing.T)
	}{
		{"Lifecycle", s.testLifecycle},
		{"ExitCodeAndOutput", s.testExitCodeAndOutput},
		{"UndeployKillsStubbornWorkload", s.testUndeployKillsStubbornWorkload},
		{"RefusesBadArtifacts", s.testRefusesBadArtifacts},
		{"StopWhileRunning", s.testStopWhileRunning},
		{"StopBeforeHandshake", s.testStopBeforeHandshake},
		{"KilledFromOutside", s.testKilledFromOutside},
		{"Concurrent", s.testConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.run)
	}
}

func (s *suite) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.timeout)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) nextID(prefix string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	return fmt.Sprintf("%s%d", prefix, s.seq)
}

// start starts a sandbox for a and stops it when the test ends.
func (s *suite) start(t *testing.T, d sandbox.Driver, a *Agent) (sandbox.Sandbox, sandbox.Spec) {
	t.Helper()
	spec := a.Spec(t.TempDir())
	sb, err := d.Start(s.ctx(t), spec)
	if err != nil {
		t.Fatalf("start sandbox %s: %v", spec.ID, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.timeout)
		defer cancel()
		if err := sb.Stop(ctx); err != nil {
			t.Errorf("stop sandbox %s: %v", spec.ID, err)
		}
		if t.Failed() {
			dumpLogs(t, spec.Dir)
		}
	})
	if sb.ID() != spec.ID {
		t.Fatalf("sandbox id = %q, want %q", sb.ID(), spec.ID)
	}
	a.Watch(sb)
	return sb, spec
}

// ready starts a sandbox and waits for its handshake.
func (s *suite) ready(t *testing.T) (*Agent, sandbox.Sandbox) {
	t.Helper()
	a := s.h.AddAgent(s.nextID("sb"))
	sb, _ := s.start(t, s.newDriver(t), a)
	if _, err := a.WaitHandshake(s.ctx(t)); err != nil {
		t.Fatal(err)
	}
	return a, sb
}

// deploy runs the test workload with args in a's sandbox.
func (s *suite) deploy(t *testing.T, a *Agent, env map[string]string, args ...string) agentapi.Deploy {
	t.Helper()
	id := s.nextID("wl")
	user, pass := s.h.Server.AddWorkloadUser(id)
	t.Cleanup(func() { s.h.Server.RemoveWorkloadUser(id) })
	d := agentapi.Deploy{
		WorkloadID: id, Name: "testworkload", Namespace: "default", Type: "native",
		Argv: args, Env: env, NATSUser: user, NATSPassword: pass,
	}
	r, err := a.Deploy(s.ctx(t), d, s.workload)
	if err != nil {
		t.Fatal(err)
	}
	if !r.OK {
		t.Fatalf("deploy refused: %s", r.Error)
	}
	return d
}

func (s *suite) waitDone(t *testing.T, sb sandbox.Sandbox) {
	t.Helper()
	select {
	case <-sb.Done():
	case <-s.ctx(t).Done():
		t.Fatalf("sandbox %s still running after %s", sb.ID(), s.cfg.timeout)
	}
}

func (s *suite) testLifecycle(t *testing.T) {
	a := s.h.AddAgent(s.nextID("sb"))
	sb, spec := s.start(t, s.newDriver(t), a)
	hs, err := a.WaitHandshake(s.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if hs.SandboxID != a.ID || hs.AgentVersion != agentapi.Version || hs.StartedAt.IsZero() {
		t.Fatalf("handshake = %+v, want sandbox %s, version %s and a start time", hs, a.ID, agentapi.Version)
	}
	if pid, err := os.ReadFile(filepath.Join(spec.Dir, sandbox.PIDFile)); err != nil || strings.TrimSpace(string(pid)) != strconv.Itoa(sb.PID()) {
		t.Fatalf("pid file = %q, %v; want %d", pid, err, sb.PID())
	}
	if r, err := a.Ping(s.ctx(t)); err != nil || !r.OK || r.Running {
		t.Fatalf("ping before deploy = %+v, %v; want OK and not running", r, err)
	}

	subject := "echo." + a.ID
	d := s.deploy(t, a, nil, "echo", subject)
	if e, err := a.WaitEvent(s.ctx(t), agentapi.EventWorkloadStarted); err != nil || e.WorkloadID != d.WorkloadID {
		t.Fatalf("started event %+v, %v; want workload %s", e, err, d.WorkloadID)
	}
	for _, l := range []struct{ stream, text string }{{"stdout", "hello stdout"}, {"stderr", "hello stderr"}, {"stdout", "ready"}} {
		if err := a.WaitLog(s.ctx(t), l.stream, l.text); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := a.Ping(s.ctx(t)); err != nil || !r.OK || !r.Running {
		t.Fatalf("ping with a workload = %+v, %v; want OK and running", r, err)
	}

	// The workload reached NATS with the NATS_URL the agent gave it: a
	// client of the workload account gets its echo.
	user, pass := s.h.Server.AddWorkloadUser("client-" + a.ID)
	client, err := nats.Connect(s.h.Server.ClientURL(), nats.UserInfo(user, pass))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	msg, err := client.RequestWithContext(s.ctx(t), subject, []byte("hi"))
	if err != nil || string(msg.Data) != "echo: hi" {
		t.Fatalf("echo over workload NATS = %v, %v", msg, err)
	}

	if r, err := a.Undeploy(s.ctx(t), "test done"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	e, err := a.WaitEvent(s.ctx(t), agentapi.EventWorkloadExited)
	if err != nil {
		t.Fatal(err)
	}
	if e.WorkloadID != d.WorkloadID || e.Code != 0 {
		t.Fatalf("exit event = %+v; want workload %s, code 0 (it exits cleanly on SIGTERM)", e, d.WorkloadID)
	}
	if err := a.WaitLog(s.ctx(t), "stdout", "terminating"); err != nil {
		t.Fatal(err)
	}
	// One workload per sandbox: after its workload, the sandbox ends by
	// itself, cleanly.
	s.waitDone(t, sb)
	if err := sb.Err(); err != nil {
		t.Fatalf("sandbox ended with %v; want nil after an undeploy", err)
	}
	for range 2 {
		if err := sb.Stop(s.ctx(t)); err != nil {
			t.Fatalf("stop after exit: %v", err)
		}
	}
	if err := sb.Err(); err != nil {
		t.Fatalf("Err changed to %v by a Stop after exit", err)
	}
}

func (s *suite) testExitCodeAndOutput(t *testing.T) {
	a, sb := s.ready(t)
	d := s.deploy(t, a, map[string]string{"GREETING": "hello world"}, "exit", "3")
	e, err := a.WaitEvent(s.ctx(t), agentapi.EventWorkloadExited)
	if err != nil {
		t.Fatal(err)
	}
	if e.WorkloadID != d.WorkloadID || e.Code != 3 || !strings.Contains(e.Message, "3") {
		t.Fatalf("exit event = %+v; want workload %s, code 3 and a message saying so", e, d.WorkloadID)
	}
	// Everything the workload wrote arrived, the unterminated last line and
	// every piece of a long line included. (Logs and events travel on
	// different subjects, so the event may be seen first.)
	if err := a.WaitLog(s.ctx(t), "stdout", "last words"); err != nil {
		t.Fatalf("unterminated last line lost: %v", err)
	}
	logs := a.Logs()
	var xs int
	var env []string
	for _, l := range logs {
		if l.Stream != "stdout" {
			continue
		}
		if strings.Trim(l.Text, "x") == "" {
			xs += len(l.Text)
		}
		if kv, ok := strings.CutPrefix(l.Text, "env "); ok {
			env = append(env, kv)
		}
	}
	if xs != 20000 {
		t.Errorf("long line: got %d of 20000 bytes", xs)
	}
	if !slices.Contains(env, "GREETING=hello world") {
		t.Errorf("deploy env missing from the workload's environment %q", env)
	}
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "NATS_URL=nats://"+d.NATSUser+":") }) {
		t.Errorf("no NATS_URL with the workload's user in %q", env)
	}
	if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "NEX_") }) {
		t.Errorf("the agent's own environment leaked into the workload: %q", env)
	}
	s.waitDone(t, sb)
	if err := sb.Err(); err != nil {
		t.Fatalf("sandbox ended with %v; want nil after its workload exited", err)
	}
}

func (s *suite) testUndeployKillsStubbornWorkload(t *testing.T) {
	a, sb := s.ready(t)
	s.deploy(t, a, nil, "ignore-term")
	if err := a.WaitLog(s.ctx(t), "stdout", "ready"); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Undeploy(s.ctx(t), "test"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	e, err := a.WaitEvent(s.ctx(t), agentapi.EventWorkloadExited)
	if err != nil {
		t.Fatal(err)
	}
	if e.Code != 128+9 || !strings.Contains(e.Message, "signal 9") {
		t.Fatalf("exit event = %+v; want code 137, killed by signal 9", e)
	}
	s.waitDone(t, sb)
}

func (s *suite) testRefusesBadArtifacts(t *testing.T) {
	a, sb := s.ready(t)
	text := []byte("this is not a program\n")
	cases := []struct {
		name     string
		d        agentapi.Deploy
		artifact []byte
		want     string
	}{
		{"wrong hash", agentapi.Deploy{Hash: strings.Repeat("ab", 32)}, s.workload, "sha256"},
		{"wrong size", agentapi.Deploy{Size: int64(len(text)) + 1}, text, "bytes"},
		{"not executable", agentapi.Deploy{}, text, "cannot run here: not an executable"},
		{"node has no artifact", agentapi.Deploy{Hash: strings.Repeat("ab", 32), Size: 1}, nil, "no artifact"},
		{"unknown type", agentapi.Deploy{Type: "cobol"}, text, "cobol"},
	}
	for _, c := range cases {
		d := c.d
		d.WorkloadID, d.Name = s.nextID("wl"), "bad"
		if d.Type == "" {
			d.Type = "native"
		}
		r, err := a.Deploy(s.ctx(t), d, c.artifact)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if r.OK || !strings.Contains(r.Error, c.want) {
			t.Errorf("%s: deploy = %+v; want a refusal mentioning %q", c.name, r, c.want)
		}
	}
	// Refusals leave the sandbox alive and free.
	if r, err := a.Ping(s.ctx(t)); err != nil || !r.OK || r.Running {
		t.Fatalf("ping after refusals = %+v, %v", r, err)
	}
	if len(a.Events()) != 0 {
		t.Errorf("events after refused deploys: %+v", a.Events())
	}
	if r, err := a.Undeploy(s.ctx(t), "test"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	s.waitDone(t, sb)
}

func (s *suite) testStopWhileRunning(t *testing.T) {
	a, sb := s.ready(t)
	s.deploy(t, a, nil, "echo", "echo."+a.ID)
	if err := a.WaitLog(s.ctx(t), "stdout", "ready"); err != nil {
		t.Fatal(err)
	}
	if err := sb.Stop(s.ctx(t)); err != nil {
		t.Fatal(err)
	}
	s.waitDone(t, sb)
	if err := sb.Err(); !errors.Is(err, sandbox.ErrStopped) {
		t.Fatalf("Err = %v; want ErrStopped", err)
	}
}

func (s *suite) testStopBeforeHandshake(t *testing.T) {
	a := s.h.AddMuteAgent(s.nextID("sb"))
	sb, _ := s.start(t, s.newDriver(t), a)
	// The agent is up and asking; nobody answers.
	if _, err := a.WaitHandshake(s.ctx(t)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := sb.Stop(s.ctx(t)); err != nil {
			t.Fatal(err)
		}
		s.waitDone(t, sb)
		if err := sb.Err(); !errors.Is(err, sandbox.ErrStopped) {
			t.Fatalf("Err = %v; want ErrStopped", err)
		}
	}
}

func (s *suite) testKilledFromOutside(t *testing.T) {
	_, sb := s.ready(t)
	if err := syscall.Kill(sb.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	s.waitDone(t, sb)
	if err := sb.Err(); err == nil || errors.Is(err, sandbox.ErrStopped) {
		t.Fatalf("Err = %v; want why it died", err)
	}
	if err := sb.Stop(s.ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func (s *suite) testConcurrent(t *testing.T) {
	d := s.newDriver(t)
	agents := make([]*Agent, s.cfg.concurrent)
	sbs := make([]sandbox.Sandbox, len(agents))
	errs := make([]error, len(agents))
	var wg sync.WaitGroup
	for i := range agents {
		agents[i] = s.h.AddAgent(s.nextID("sb"))
		spec := agents[i].Spec(t.TempDir())
		wg.Go(func() { sbs[i], errs[i] = d.Start(s.ctx(t), spec) })
	}
	wg.Wait()
	for i, sb := range sbs {
		if errs[i] != nil {
			t.Fatalf("start %s: %v", agents[i].ID, errs[i])
		}
		t.Cleanup(func() { _ = sb.Stop(context.Background()) })
	}
	for i, a := range agents {
		hs, err := a.WaitHandshake(s.ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if hs.SandboxID != a.ID || sbs[i].ID() != a.ID {
			t.Fatalf("sandbox %s handshook as %s", a.ID, hs.SandboxID)
		}
		if r, err := a.Ping(s.ctx(t)); err != nil || !r.OK {
			t.Fatalf("ping %s = %+v, %v", a.ID, r, err)
		}
	}
	for _, sb := range sbs {
		wg.Go(func() { _ = sb.Stop(s.ctx(t)) })
	}
	wg.Wait()
	for _, sb := range sbs {
		if err := sb.Err(); !errors.Is(err, sandbox.ErrStopped) {
			t.Errorf("sandbox %s: Err = %v; want ErrStopped", sb.ID(), err)
		}
	}
}

// dumpLogs shows the tail of every log file a driver keeps in dir.
func dumpLogs(t *testing.T, dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		if len(b) > 4096 {
			b = b[len(b)-4096:]
		}
		t.Logf("%s:\n%s", p, b)
	}
}
