package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
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

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
)

// events collects CloudEvents from the control plane.
type eventLog struct {
	mu  sync.Mutex
	evs []api.CloudEvent
}

func (h *harness) events(subject string) *eventLog {
	l := &eventLog{}
	sub, err := h.nc.Subscribe(subject, func(m *nats.Msg) {
		var ev api.CloudEvent
		if json.Unmarshal(m.Data, &ev) == nil {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			l.mu.Unlock()
		}
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = sub.Unsubscribe() })
	_ = h.nc.Flush()
	return l
}

func (l *eventLog) count(typ string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, e := range l.evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

func (l *eventLog) last(typ string, out any) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.evs) - 1; i >= 0; i-- {
		if l.evs[i].Type == typ {
			return json.Unmarshal(l.evs[i].Data, out) == nil
		}
	}
	return false
}

func (h *harness) echo(subject, payload string) (string, error) {
	m, err := h.nc.Request(subject, []byte(payload), 500*time.Millisecond)
	if err != nil {
		return "", err
	}
	return string(m.Data), nil
}

func (h *harness) stopJWT(name string) string {
	h.t.Helper()
	tok, err := controlclient.StopJWT(h.ctx(), h.issuer, name, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

func pidAlive(pid int) bool { return pid > 0 && syscall.Kill(pid, 0) == nil }

func TestDeployEchoLogsAndStop(t *testing.T) {
	h := newHarness(t, nil)
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("echo", data)
	evs := h.events("$NEX.events.default.*")

	logs := make(chan api.LogEntry, 1000)
	lsub, _ := h.nc.Subscribe("$NEX.logs.default.>", func(m *nats.Msg) {
		var e api.LogEntry
		if json.Unmarshal(m.Data, &e) == nil {
			logs <- e
		}
	})
	defer lsub.Unsubscribe()

	req := h.deployRequest("echo", "echo", hash, map[string]string{"greeting": "hi"}, "echo", "svc.echo")
	run, err := h.deploy(req)
	if err != nil {
		t.Fatal(err)
	}
	issuerPub, _ := h.issuer.PublicKey()
	if !run.Started || run.ID == "" || run.Name != "echo" || run.Issuer != issuerPub {
		t.Fatalf("run response %+v", run)
	}
	// The workload's service answers on the control plane (through the leaf).
	eventually(t, 20*time.Second, "svc.echo to answer", func() bool {
		got, err := h.echo("svc.echo", "hello")
		return err == nil && got == "echo: hello"
	})
	// Its output arrived as logs with the protocol's subject and body.
	deadline := time.After(10 * time.Second)
	for seen := false; !seen; {
		select {
		case e := <-logs:
			seen = e.Text == "hello stdout" && e.WorkloadID == run.ID && e.NodeID == h.node.ID() && e.Namespace == "default"
		case <-deadline:
			t.Fatal("no log line from the workload")
		}
	}
	if evs.count(api.EventWorkloadDeployed) != 1 {
		t.Fatal("no workload_deployed event")
	}
	// INFO and WPING list it; PING counts it.
	info, _ := h.client.Info(h.ctx(), "default", h.node.ID())
	if len(info.Machines) != 1 || info.Machines[0].ID != run.ID || info.Machines[0].Workload.Hash != hash || !info.Machines[0].Healthy {
		t.Fatalf("info machines %+v", info.Machines)
	}
	if w, err := h.client.WorkloadPing(h.ctx(), "default", "echo"); err != nil || len(w) != 1 || w[0].RunningMachines[0].ID != run.ID {
		t.Fatalf("wping %v %v", w, err)
	}
	if p, _ := h.client.PingNode(h.ctx(), h.node.ID()); p.RunningMachines != 1 {
		t.Fatalf("running machines %d", p.RunningMachines)
	}
	if info, _ := h.client.Info(h.ctx(), "other", h.node.ID()); len(info.Machines) != 0 {
		t.Fatal("info of another namespace lists the workload")
	}

	var pid int
	w := h.workload(run.ID)
	pid = w.sandbox.sb.PID()

	// Stop: no responders afterwards, process and files gone.
	stop, err := h.client.Stop(h.ctx(), "default", h.node.ID(), api.StopRequest{WorkloadID: run.ID, WorkloadJWT: h.stopJWT("echo"), TargetNode: h.node.ID()})
	if err != nil || !stop.Stopped || stop.ID != run.ID {
		t.Fatalf("stop %v %v", stop, err)
	}
	if _, err := h.echo("svc.echo", "x"); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after stop: %v", err)
	}
	if pidAlive(pid) {
		t.Fatalf("sandbox process %d still alive", pid)
	}
	var und api.WorkloadUndeployedEvent
	eventually(t, 5*time.Second, "workload_undeployed", func() bool { return evs.last(api.EventWorkloadUndeployed, &und) })
	if und.WorkloadName != "echo" || und.Code != 0 {
		t.Fatalf("undeployed %+v", und)
	}
	h.assertClean(t)
}

// assertClean checks nothing of past workloads is left: sandboxes are the
// pool's, no workload credentials, no artifact in use or half-written.
func (h *harness) assertClean(t *testing.T) {
	t.Helper()
	eventually(t, 20*time.Second, "only the warm pool to remain", func() bool {
		_, wls := h.node.internal.Users()
		h.node.mu.Lock()
		nw := len(h.node.workloads)
		h.node.mu.Unlock()
		return nw == 0 && wls == 0 && h.node.artifacts.inUse() == 0 && len(h.partials()) == 0 && len(h.sandboxDirs()) == h.cfg.PoolSize() &&
			h.node.pool.Status().Ready == h.cfg.PoolSize()
	})
	agents, _ := h.node.internal.Users()
	if agents != h.cfg.PoolSize() {
		t.Fatalf("%d agent users for a pool of %d", agents, h.cfg.PoolSize())
	}
	if _, err := h.client.PingNode(h.ctx(), h.node.ID()); err != nil {
		t.Fatalf("node stopped answering: %v", err)
	}
}

// TestArtifactOverNATS runs a workload whose artifact the agent fetches in
// chunks from the node, as VM agents do.
func TestArtifactOverNATS(t *testing.T) {
	h := newHarness(t, nil)
	h.node.testNoStaging = true
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("w", data)
	evs := h.events("$NEX.events.default.*")
	run, err := h.deploy(h.deployRequest("job", "w", hash, nil, "exit", "0"))
	if err != nil {
		t.Fatal(err)
	}
	var und api.WorkloadUndeployedEvent
	eventually(t, 20*time.Second, "the job to end", func() bool { return evs.last(api.EventWorkloadUndeployed, &und) })
	if und.Code != 0 || und.WorkloadID != run.ID {
		t.Fatalf("undeployed %+v", und)
	}
	h.assertClean(t)
}

func TestDeployRefusals(t *testing.T) {
	other, _ := nkeys.CreateAccount()
	otherPub, _ := other.PublicKey()
	h := newHarness(t, func(c *config.Config) { c.NodeLimits.MaxWorkloadBytes = 64 << 20 })
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("good", data)
	big := make([]byte, 65<<20)
	bigHash := h.upload("big", big)
	textHash := h.upload("text", []byte("hello\n"))
	scriptHash := h.upload("script", []byte("#!/opt/nex-test/interp\n"))
	otherNodeX, _ := nkeys.CreateCurveKeys()
	otherNodeXPub, _ := otherNodeX.PublicKey()
	user, _ := nkeys.CreateUser()

	sign := func(kp nkeys.KeyPair, name, hash string, mut func(*jwt.GenericClaims)) *string {
		c := jwt.NewGenericClaims(name)
		c.Data["hash"] = hash
		if mut != nil {
			mut(c)
		}
		tok, err := c.Encode(kp)
		if err != nil {
			t.Fatal(err)
		}
		return &tok
	}
	good := func() api.DeployRequest {
		return h.deployRequest("good", "good", hash, map[string]string{"a": "b"}, "exit", "0")
	}

	cases := []struct {
		name string
		raw  []byte // sent as is when set
		mut  func(*api.DeployRequest)
		want string
	}{
		{name: "malformed JSON", raw: []byte(`{"type": "native",`), want: "malformed JSON"},
		{name: "missing type", mut: func(r *api.DeployRequest) { r.WorkloadType = "" }, want: "missing field type"},
		{name: "missing location", mut: func(r *api.DeployRequest) { r.Location = nil }, want: "missing field location"},
		{name: "missing jwt", mut: func(r *api.DeployRequest) { r.WorkloadJWT = nil }, want: "missing field workload_jwt"},
		{name: "unknown type", mut: func(r *api.DeployRequest) { r.WorkloadType = "cobol" }, want: `unknown workload type "cobol"`},
		{name: "disallowed type", mut: func(r *api.DeployRequest) { r.WorkloadType = api.WorkloadWasm }, want: `"wasm" is not allowed`},
		{name: "invalid name", mut: func(r *api.DeployRequest) { r.WorkloadJWT = sign(h.issuer, "bad name!", hash, nil) }, want: "must match"},
		{name: "jwt garbage", mut: func(r *api.DeployRequest) { s := "a.b.c"; r.WorkloadJWT = &s }, want: "invalid workload JWT"},
		{name: "jwt not by an account", mut: func(r *api.DeployRequest) { r.WorkloadJWT = sign(user, "good", hash, nil) }, want: "not an account key"},
		{name: "jwt expired", mut: func(r *api.DeployRequest) {
			r.WorkloadJWT = sign(h.issuer, "good", hash, func(c *jwt.GenericClaims) { c.Expires = time.Now().Add(-time.Hour).Unix() })
		}, want: "expired"},
		{name: "jwt without hash", mut: func(r *api.DeployRequest) { r.WorkloadJWT = sign(h.issuer, "good", "", nil) }, want: "data.hash"},
		{name: "env sealed to another node", mut: func(r *api.DeployRequest) {
			s, _ := controlclient.SealEnvironment(h.sender, otherNodeXPub, map[string]string{"a": "b"})
			r.EncryptedEnvironment = &s
		}, want: "environment cannot be opened"},
		{name: "env tampered", mut: func(r *api.DeployRequest) {
			b, _ := base64.StdEncoding.DecodeString(*r.EncryptedEnvironment)
			b[len(b)-1] ^= 0xff
			s := base64.StdEncoding.EncodeToString(b)
			r.EncryptedEnvironment = &s
		}, want: "environment cannot be opened"},
		{name: "sender key mismatch", mut: func(r *api.DeployRequest) { r.SenderPublicKey = &otherNodeXPub }, want: "environment cannot be opened"},
		{name: "sender key missing", mut: func(r *api.DeployRequest) { r.SenderPublicKey = nil }, want: "sender_public_key"},
		{name: "artifact missing", mut: func(r *api.DeployRequest) { r.Location, _ = controlclient.NATSLocation("NEXCLIFILES", "nope") }, want: "nats://NEXCLIFILES/nope"},
		{name: "bucket missing", mut: func(r *api.DeployRequest) { r.Location, _ = controlclient.NATSLocation("NOBUCKET", "x") }, want: `bucket "NOBUCKET"`},
		{name: "file location not allowed", mut: func(r *api.DeployRequest) { r.Location, _ = api.ParseLocation("file:///etc/passwd") }, want: "file:// locations are not allowed"},
		{name: "hash mismatch", mut: func(r *api.DeployRequest) {
			r.WorkloadJWT = sign(h.issuer, "good", strings.Repeat("ab", 32), nil)
		}, want: "its sha256 is " + hash},
		{name: "artifact too large", mut: func(r *api.DeployRequest) {
			r.Location, _ = controlclient.NATSLocation("NEXCLIFILES", "big")
			r.WorkloadJWT = sign(h.issuer, "good", bigHash, nil)
		}, want: "over this node's limit"},
		{name: "not an executable", mut: func(r *api.DeployRequest) {
			r.Location, _ = controlclient.NATSLocation("NEXCLIFILES", "text")
			r.WorkloadJWT = sign(h.issuer, "good", textHash, nil)
		}, want: `artifact refused: good cannot run here: not an executable: neither ELF nor a #! script (it starts with "hello\n")`},
		{name: "interpreter missing", mut: func(r *api.DeployRequest) {
			r.Location, _ = controlclient.NATSLocation("NEXCLIFILES", "script")
			r.WorkloadJWT = sign(h.issuer, "good", scriptHash, nil)
		}, want: "good cannot run here: a script for /opt/nex-test/interp, which is not on this machine"},
		{name: "wrong target node", mut: func(r *api.DeployRequest) { s := "NXXX"; r.TargetNode = &s }, want: "target_node is NXXX"},
		{name: "reserved trigger", mut: func(r *api.DeployRequest) { r.TriggerSubjects = []string{"$NEX.PING"} }, want: "trigger_subjects are for function workloads"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if raw == nil {
				r := good()
				tc.mut(&r)
				raw, _ = json.Marshal(r)
			}
			m, err := h.nc.Request(api.DeploySubject("default", h.node.ID()), raw, 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			var env api.Envelope
			if err := json.Unmarshal(m.Data, &env); err != nil {
				t.Fatal(err)
			}
			if env.Type != api.TypeRunResponse || !strings.Contains(env.Error, tc.want) {
				t.Fatalf("got %s %q, want error containing %q", env.Type, env.Error, tc.want)
			}
			h.assertClean(t)
		})
	}

	t.Run("issuer not allowed", func(t *testing.T) {
		h.node.cfg.ValidIssuers = []string{otherPub}
		defer func() { h.node.cfg.ValidIssuers = nil }()
		_, err := h.deploy(good())
		if err == nil || !strings.Contains(err.Error(), "not in this node's valid_issuers") {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("agent crashes mid-deploy", func(t *testing.T) {
		h.node.testHookBeforeAgentDeploy = func(sb sandbox.Sandbox, _ *agentapi.Deploy) { _ = syscall.Kill(sb.PID(), syscall.SIGKILL) }
		defer func() { h.node.testHookBeforeAgentDeploy = nil }()
		_, err := h.deploy(good())
		if err == nil || !strings.Contains(err.Error(), "workload did not start: the agent could not start it") {
			t.Fatalf("got %v", err)
		}
		h.assertClean(t)
	})

	t.Run("workload limit", func(t *testing.T) {
		h.node.cfg.NodeLimits.MaxWorkloads = 1
		defer func() { h.node.cfg.NodeLimits.MaxWorkloads = config.DefaultMaxWorkloads }()
		run, err := h.deploy(h.deployRequest("good", "good", hash, nil, "ignore-term"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.deploy(good()); err == nil || !strings.Contains(err.Error(), "node limit reached") {
			t.Fatalf("got %v", err)
		}
		// Stops that must be refused, while the workload runs.
		stopReq := func(tok string, id string) error {
			_, err := h.client.Stop(h.ctx(), "default", h.node.ID(), api.StopRequest{WorkloadID: id, WorkloadJWT: tok})
			return err
		}
		otherTok := *sign(other, "good", "", nil)
		if err := stopReq(otherTok, run.ID); err == nil || !strings.Contains(err.Error(), "stop refused") {
			t.Fatalf("stop by another issuer: %v", err)
		}
		if err := stopReq(h.stopJWT("good"), "nope"); err == nil || !strings.Contains(err.Error(), "no such workload") {
			t.Fatalf("stop unknown id: %v", err)
		}
		// Still running after the refused stops; then a proper stop.
		if p, _ := h.client.PingNode(h.ctx(), h.node.ID()); p.RunningMachines != 1 {
			t.Fatal("workload gone after refused stops")
		}
		if err := stopReq(h.stopJWT("good"), run.ID); err != nil {
			t.Fatal(err)
		}
		h.assertClean(t)
	})

	t.Run("lame duck", func(t *testing.T) {
		if _, err := h.client.LameDuck(h.ctx(), h.node.ID()); err != nil {
			t.Fatal(err)
		}
		if _, err := h.deploy(good()); err == nil || !strings.Contains(err.Error(), "lame-duck") {
			t.Fatalf("got %v", err)
		}
		h.assertClean(t)
	})
}

func TestStopWithReplayedDeployJWT(t *testing.T) {
	h := newHarness(t, nil)
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("w", data)
	req := h.deployRequest("w", "w", hash, nil, "ignore-term")
	run, err := h.deploy(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = h.client.Stop(h.ctx(), "default", h.node.ID(), api.StopRequest{WorkloadID: run.ID, WorkloadJWT: *req.WorkloadJWT})
	if err == nil || !strings.Contains(err.Error(), "replays the deploy JWT") {
		t.Fatalf("got %v", err)
	}
	// ignore-term needs the forced kill path of undeploy.
	if _, err := h.client.Stop(h.ctx(), "default", h.node.ID(), api.StopRequest{WorkloadID: run.ID, WorkloadJWT: h.stopJWT("w")}); err != nil {
		t.Fatal(err)
	}
	h.assertClean(t)
}

func TestWorkloadExitAndEssentialRestart(t *testing.T) {
	h := newHarness(t, nil)
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("w", data)
	evs := h.events("$NEX.events.>")

	// Jobs that exit at once with a code: the undeployed event carries the
	// code even when the agent's exit report overtakes its deploy reply.
	for i := 0; i < 5; i++ {
		run, err := h.deploy(h.deployRequest("job", "w", hash, nil, "exit", "3"))
		if err != nil {
			t.Fatal(err)
		}
		var und api.WorkloadUndeployedEvent
		eventually(t, 10*time.Second, "workload_undeployed", func() bool {
			return evs.last(api.EventWorkloadUndeployed, &und) && und.WorkloadID == run.ID
		})
		if und.Code != 3 {
			t.Fatalf("job %d: undeployed %+v", i, und)
		}
		h.assertClean(t)
	}

	// An essential service survives kill -9 of its process and of its agent.
	req := h.deployRequest("svc", "w", hash, nil, "echo", "svc.ess")
	yes := true
	req.Essential = &yes
	run, err := h.deploy(req)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "svc.ess", func() bool { got, err := h.echo("svc.ess", "a"); return err == nil && got == "echo: a" })

	sandboxPID := func() int {
		w := h.workload(run.ID)
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.sandbox == nil {
			return 0
		}
		return w.sandbox.sb.PID()
	}
	// Kill the workload process (a child of the agent, in its own group).
	agentPID := sandboxPID()
	wpid := childOf(t, agentPID)
	_ = syscall.Kill(wpid, syscall.SIGKILL)
	eventually(t, 30*time.Second, "restart after the workload was killed", func() bool {
		p := sandboxPID()
		got, err := h.echo("svc.ess", "b")
		return p != 0 && p != agentPID && err == nil && got == "echo: b"
	})
	if evs.count(api.EventWorkloadUndeployed) < 2 {
		t.Fatal("no workload_undeployed for the killed workload")
	}
	// Kill the agent itself.
	agentPID = sandboxPID()
	_ = syscall.Kill(agentPID, syscall.SIGKILL)
	eventually(t, 30*time.Second, "restart after the agent was killed", func() bool {
		p := sandboxPID()
		got, err := h.echo("svc.ess", "c")
		return p != 0 && p != agentPID && err == nil && got == "echo: c"
	})
	if evs.count(api.EventAgentStopped) < 1 {
		t.Fatal("no agent_stopped event")
	}
	// Same workload id throughout, with its retry count.
	w := h.workload(run.ID)
	if w == nil || w.retries < 2 {
		t.Fatalf("workload %v", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := h.client.Stop(ctx, "default", h.node.ID(), api.StopRequest{WorkloadID: run.ID, WorkloadJWT: h.stopJWT("svc")}); err != nil {
		t.Fatal(err)
	}
	h.assertClean(t)
}

// childOf returns a child process of pid (any of its threads may have forked it).
func childOf(t *testing.T, pid int) int {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/" + itoa(pid) + "/task/*/children")
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		if fs := strings.Fields(string(b)); len(fs) > 0 {
			return atoi(fs[0])
		}
	}
	t.Fatalf("process %d has no child", pid)
	return 0
}

// A stop of a deploy that is still fetching its artifact must neither take
// a reference another workload of the same artifact holds nor leak the one
// the deploy takes: the deploy fails, and once the other workload stops no
// artifact is in use.
func TestStopDuringFetchKeepsArtifactReferences(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { n := 2; c.MachinePoolSize = &n })
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("echo", data)
	first, err := h.deploy(h.deployRequest("first", "echo", hash, nil, "echo", "svc.first"))
	if err != nil {
		t.Fatal(err)
	}
	h.node.testHookAfterFetch = func(w *workload) { h.node.undeploy(h.ctx(), w, "stopped in the test") }
	_, err = h.deploy(h.deployRequest("second", "echo", hash, nil, "echo", "svc.second"))
	h.node.testHookAfterFetch = nil
	if err == nil || !strings.Contains(err.Error(), "stopped while its artifact was fetched") {
		t.Fatalf("deploy stopped during its fetch: %v", err)
	}
	if got := h.node.artifacts.inUse(); got != 1 {
		t.Fatalf("%d artifacts in use while the first workload runs, want 1", got)
	}
	w := h.workload(first.ID)
	h.node.undeploy(h.ctx(), w, "test")
	eventually(t, 10*time.Second, "no artifact in use", func() bool { return h.node.artifacts.inUse() == 0 })
}

// TestLogFlood: a workload that writes 200,000 lines as fast as it can
// gets every one of them to the control plane and ends as it meant to
// (exit 0). Its agent ends right after it, while the node is still working
// through its output: that end is not a sandbox that died.
func TestLogFlood(t *testing.T) {
	_, wl := binaries(t)
	testLogFlood(t, newHarness(t, nil), wl, 200_000, 1)
}

// TestLogFloodMany: three workloads flooding at once print faster than the
// node passes their lines on. Their agents wait for the node (log flow
// control) rather than have it drop lines, or an exit report behind them.
func TestLogFloodMany(t *testing.T) {
	_, wl := binaries(t)
	testLogFlood(t, newHarness(t, nil), wl, 200_000, 3)
}

func testLogFlood(t testing.TB, h *harness, wl string, lines, floods int) time.Duration {
	data, err := os.ReadFile(wl)
	if err != nil {
		t.Fatal(err)
	}
	hash := h.upload("flood", data)
	evs := h.events("$NEX.events.default.*")
	var mu sync.Mutex
	got := map[string]int{}
	lsub, err := h.nc.Subscribe("$NEX.logs.default.>", func(m *nats.Msg) {
		var e api.LogEntry
		if json.Unmarshal(m.Data, &e) == nil && (strings.HasPrefix(e.Text, "line ") || strings.HasPrefix(e.Text, "flooded ")) {
			mu.Lock()
			got[e.WorkloadID]++
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer lsub.Unsubscribe()
	_ = lsub.SetPendingLimits(-1, -1) // the test's own subscription must not be what drops
	start := time.Now()
	var ids []string
	for range floods {
		run, err := h.deploy(h.deployRequest("flood", "flood", hash, nil, "flood", strconv.Itoa(lines)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, run.ID)
	}
	ended := func() (map[string]api.WorkloadUndeployedEvent, int) {
		evs.mu.Lock()
		defer evs.mu.Unlock()
		out := map[string]api.WorkloadUndeployedEvent{}
		for _, e := range evs.evs {
			var und api.WorkloadUndeployedEvent
			if e.Type == api.EventWorkloadUndeployed && json.Unmarshal(e.Data, &und) == nil && slices.Contains(ids, und.WorkloadID) {
				out[und.WorkloadID] = und
			}
		}
		return out, len(out)
	}
	eventually(t, 2*time.Minute, "the workloads to end", func() bool { _, n := ended(); return n == floods })
	und, _ := ended()
	for _, id := range ids {
		if und[id].Code != 0 {
			t.Errorf("workload_undeployed %+v; want exit 0", und[id])
		}
	}
	all := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			if got[id] != lines+1 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(30 * time.Second)
	for !all() {
		if time.Now().After(deadline) {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("lines per workload: %v; want %d each", got, lines+1)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// BenchmarkLogFlood: workloads printing 200,000 lines each as fast as they
// can, one or three at once, on a process node: the lines per second that
// reach the control plane (every one of them; the test fails otherwise).
//
//	go test ./internal/node -run '^$' -bench LogFlood -benchtime 3x
func BenchmarkLogFlood(b *testing.B) {
	_, wl := binaries(b)
	for _, floods := range []int{1, 3} {
		b.Run(fmt.Sprintf("floods=%d", floods), func(b *testing.B) {
			h := newHarness(b, nil)
			const lines = 200_000
			var took time.Duration
			for range b.N {
				took += testLogFlood(b, h, wl, lines, floods)
			}
			b.ReportMetric(float64(b.N*floods*(lines+1))/took.Seconds(), "lines/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// TestSilentAgentIsDead: an agent that answers no pings is taken for dead
// after three, and its workload ended; unless it is sending its workload's
// output meanwhile, which a ping's answer can be held up behind.
func TestSilentAgentIsDead(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.AgentPingInterval = config.Duration(2 * time.Second) })
	_, wl := binaries(t)
	data, _ := os.ReadFile(wl)
	hash := h.upload("wl", data)
	evs := h.events("$NEX.events.default.*")
	h.node.testPingsFail.Store(true)
	// One line a second, for 8 s (four ping intervals): alive.
	chatty, err := h.deploy(h.deployRequest("chatty", "wl", hash, nil, "clock", "8"))
	if err != nil {
		t.Fatal(err)
	}
	silent, err := h.deploy(h.deployRequest("silent", "wl", hash, nil, "ignore-term"))
	if err != nil {
		t.Fatal(err)
	}
	ended := func(id string) (api.WorkloadUndeployedEvent, bool) {
		evs.mu.Lock()
		defer evs.mu.Unlock()
		for _, e := range evs.evs {
			var u api.WorkloadUndeployedEvent
			if e.Type == api.EventWorkloadUndeployed && json.Unmarshal(e.Data, &u) == nil && u.WorkloadID == id {
				return u, true
			}
		}
		return api.WorkloadUndeployedEvent{}, false
	}
	eventually(t, 30*time.Second, "the silent one to be taken for dead", func() bool {
		u, ok := ended(silent.ID)
		return ok && u.Message == "agent stopped answering pings"
	})
	eventually(t, 30*time.Second, "the chatty one to end by itself", func() bool {
		_, ok := ended(chatty.ID)
		return ok
	})
	if u, _ := ended(chatty.ID); u.Code != 0 {
		t.Fatalf("the chatty workload ended with %+v; want its own exit, 0", u)
	}
}
