package node

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
)

// prestageDriver runs process sandboxes that say they take files ahead
// (sandbox.Prestager, as a VM with a file port does) and records every
// Stage: the node's real deploy and pool code, with real agents, decides
// when they come.
type prestageDriver struct {
	*process.Driver
	mu sync.Mutex
	// log is every Stage and Unstage, in order.
	log  []stageOp
	gate chan struct{} // when set, Start waits for it to close
	// unstageErr, when set, is what every Unstage fails with.
	unstageErr error
}

type stageCall struct{ sandbox, name string }

// stageOp is one call: a Stage (a StageTrial, with its args, when trial
// is set), or an Unstage when del is set.
type stageOp struct {
	stageCall
	del   bool
	trial bool
	args  []string
}

func (d *prestageDriver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	d.mu.Lock()
	gate := d.gate
	d.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	sb, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return &prestageSandbox{Sandbox: sb.(*process.Sandbox), d: d}, nil
}

func (d *prestageDriver) record(op stageOp) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, op)
}

// logged is the calls with del set as given, in order.
func (d *prestageDriver) logged(del bool) []stageCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	var c []stageCall
	for _, op := range d.log {
		if op.del == del {
			c = append(c, op.stageCall)
		}
	}
	return c
}

func (d *prestageDriver) calls() []stageCall        { return d.logged(false) }
func (d *prestageDriver) unstageCalls() []stageCall { return d.logged(true) }

// opsOn is what was staged into sandbox id (+name) and deleted (-name),
// in order.
func (d *prestageDriver) opsOn(id string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ops []string
	for _, op := range d.log {
		switch {
		case op.sandbox != id:
		case op.del:
			ops = append(ops, "-"+op.name)
		default:
			ops = append(ops, "+"+op.name)
		}
	}
	return ops
}

type prestageSandbox struct {
	*process.Sandbox
	d *prestageDriver
}

func (s *prestageSandbox) Prestage() bool { return true }

func (s *prestageSandbox) Stage(ctx context.Context, src, name string) (string, error) {
	s.d.record(stageOp{stageCall: stageCall{s.ID(), name}})
	return s.Sandbox.Stage(ctx, src, name)
}

// StageTrial records the trial start asked for; the process sandbox has
// none to give (a VM's test is TestTrialStartOfAStagedWorkload).
func (s *prestageSandbox) StageTrial(ctx context.Context, src, name string, args []string) (string, error) {
	s.d.record(stageOp{stageCall{s.ID(), name}, false, true, args})
	return s.Sandbox.Stage(ctx, src, name)
}

// trials is every Stage in order, with whether it asked for a trial start
// and with what arguments.
func (d *prestageDriver) trials() []stageOp {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ops []stageOp
	for _, op := range d.log {
		if !op.del {
			ops = append(ops, op)
		}
	}
	return ops
}

func (s *prestageSandbox) Unstage(ctx context.Context, name string) error {
	s.d.mu.Lock()
	err := s.d.unstageErr
	s.d.mu.Unlock()
	if err != nil {
		return err
	}
	s.d.record(stageOp{stageCall: stageCall{s.ID(), name}, del: true})
	return s.Sandbox.Unstage(ctx, name)
}

// prestageEnv is a node on prestageDriver with two artifacts uploaded: a,
// the test workload, and b, the same bytes with more after the ELF's end
// (which changes nothing but the hash).
type prestageEnv struct {
	h            *harness
	d            *prestageDriver
	evs          *eventLog
	hashA, hashB string
}

func newPrestageEnv(t *testing.T, prestage bool, poolSize int, mutate ...func(*config.Config)) prestageEnv {
	nex, wl := binaries(t)
	var d *prestageDriver
	h := newHarnessWithDriver(t, func(c *config.Config) {
		c.VMPrestage, c.MachinePoolSize = &prestage, &poolSize
		for _, m := range mutate {
			m(c)
		}
	},
		func(*config.Config) (driverOf, error) {
			pd, err := process.New(process.Config{AgentBinary: nex, Log: quietLog()})
			d = &prestageDriver{Driver: pd}
			return d, err
		})
	a, err := os.ReadFile(wl)
	if err != nil {
		t.Fatal(err)
	}
	b := append(slices.Clone(a), "another artifact"...)
	return prestageEnv{h: h, d: d, evs: h.events("$NEX.events.default.*"), hashA: h.upload("a", a), hashB: h.upload("b", b)}
}

// runJob deploys the test workload's "exit 0" from key and waits for it to
// end well.
func runJob(t *testing.T, h *harness, evs *eventLog, key, hash string) {
	t.Helper()
	before := evs.count(api.EventWorkloadUndeployed)
	run, err := h.deploy(h.deployRequest("job", key, hash, nil, "exit", "0"))
	if err != nil {
		t.Fatal(err)
	}
	var und api.WorkloadUndeployedEvent
	eventually(t, 20*time.Second, "the job to end", func() bool {
		return evs.count(api.EventWorkloadUndeployed) > before && evs.last(api.EventWorkloadUndeployed, &und)
	})
	if und.Code != 0 || und.WorkloadID != run.ID {
		t.Fatalf("undeployed %+v", und)
	}
}

// The artifact deployed last is staged into each new sandbox before it
// joins the pool; a redeploy of it stages nothing, another artifact is
// staged at its deploy as before.
func TestPrestageLastArtifact(t *testing.T) {
	e := newPrestageEnv(t, true, 1)
	h, d, evs, hashA, hashB := e.h, e.d, e.evs, e.hashA, e.hashB
	var mu sync.Mutex
	var deploys []agentapi.Deploy // what the agents were asked
	h.node.testHookBeforeAgentDeploy = func(_ sandbox.Sandbox, d *agentapi.Deploy) {
		mu.Lock()
		deploys = append(deploys, *d)
		mu.Unlock()
		// A process agent has no staged directory (its staged files are
		// links in its work dir) and refuses any Unstage, as it should;
		// here only what the node asks is checked. The agent's side is
		// TestDeployUnstages, a real guest's TestStageIntoGuest.
		d.Unstage = nil
	}
	deploy := func(i int) agentapi.Deploy {
		mu.Lock()
		defer mu.Unlock()
		return deploys[i]
	}

	// Nothing deployed yet: the first pooled sandbox got nothing ahead.
	if c := d.calls(); len(c) != 0 {
		t.Fatalf("stages before any deploy: %v", c)
	}
	runJob(t, h, evs, "a", hashA)
	// Staged at its deploy, then into the refill ahead of any deploy.
	eventually(t, 20*time.Second, "the refill to get a staged ahead", func() bool { return len(d.calls()) == 2 })
	c := d.calls()
	if c[0].name != hashA || c[1].name != hashA || c[0].sandbox == c[1].sandbox {
		t.Fatalf("stages %v; want a into the deploy's sandbox, then a into the next", c)
	}
	ahead := c[1].sandbox

	// The redeploy runs in that sandbox without a stage of its own.
	runJob(t, h, evs, "a", hashA)
	eventually(t, 20*time.Second, "the next refill", func() bool { return len(d.calls()) == 3 })
	c = d.calls()
	if c[2].name != hashA || c[2].sandbox == ahead {
		t.Fatalf("stages %v; the redeploy into %s staged again", c, ahead)
	}
	if d := deploy(1); d.StagedPath == "" || len(d.Unstage) != 0 {
		t.Fatalf("redeploy asked the agent for %+v; want the file staged ahead, nothing to unstage", d)
	}

	// Another artifact is staged at its deploy, into the sandbox holding
	// a, once a is deleted there: the sandbox never holds both.
	runJob(t, h, evs, "b", hashB)
	into := c[2].sandbox
	if ops := d.opsOn(into); !slices.Equal(ops, []string{"+" + hashA, "-" + hashA, "+" + hashB}) {
		t.Fatalf("into %s: %v; want a ahead, then at b's deploy a deleted before b went in", into, ops)
	}
	// So the agent has nothing left to delete.
	if d := deploy(2); d.Hash != hashB || len(d.Unstage) != 0 || d.StagedPath == "" {
		t.Fatalf("deploy of b asked the agent for %+v; want b staged, nothing to unstage", d)
	}
	// And now b is what new sandboxes get. (The refill may join the pool
	// before b's deploy staged b, when a was still the last artifact, and
	// get b from the restage after it.)
	eventually(t, 20*time.Second, "b staged ahead", func() bool {
		return slices.ContainsFunc(d.calls(), func(c stageCall) bool { return c.name == hashB && c.sandbox != into })
	})
	h.assertClean(t)
}

// When the file staged ahead cannot be deleted before another artifact's
// deploy stages its own (a guest's file port refusing it), the deploy goes
// on and has the agent delete it.
func TestDeployUnstageFallsBackToTheAgent(t *testing.T) {
	e := newPrestageEnv(t, true, 1)
	h, d, evs, hashA, hashB := e.h, e.d, e.evs, e.hashA, e.hashB
	var got atomic.Value // the last deploy the agent was asked
	h.node.testHookBeforeAgentDeploy = func(_ sandbox.Sandbox, dep *agentapi.Deploy) {
		got.Store(*dep)
		dep.Unstage = nil // a process agent refuses it (TestPrestageLastArtifact)
	}
	runJob(t, h, evs, "a", hashA)
	eventually(t, 20*time.Second, "the refill to get a staged ahead", func() bool { return len(d.calls()) == 2 })
	d.mu.Lock()
	d.unstageErr = errors.New("refused")
	d.mu.Unlock()
	runJob(t, h, evs, "b", hashB)
	dep := got.Load().(agentapi.Deploy)
	ahead := d.calls()[1]
	if dep.Hash != hashB || dep.StagedPath == "" || len(dep.Unstage) != 1 || !strings.HasSuffix(dep.Unstage[0], hashA) {
		t.Fatalf("deploy of b asked the agent for %+v; want b staged and a, staged ahead into %s, unstaged", dep, ahead.sandbox)
	}
	h.assertClean(t)
}

// A file staged ahead asks for a trial start with the arguments of its
// artifact's last deploy; a deploy's own stage asks for none (the deploy
// runs it at once). vm_trial_start false: none at all.
func TestPrestageTrialStartArgs(t *testing.T) {
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("vm_trial_start=%v", on), func(t *testing.T) {
			e := newPrestageEnv(t, true, 1, func(c *config.Config) { c.VMTrialStart = &on })
			h, d, evs, hashA := e.h, e.d, e.evs, e.hashA
			runJob(t, h, evs, "a", hashA)
			eventually(t, 20*time.Second, "the refill to get a staged ahead", func() bool { return len(d.calls()) == 2 })
			ops := d.trials()
			if ops[0].trial {
				t.Fatalf("the deploy's own stage asked for a trial start: %+v", ops[0])
			}
			if got := ops[1]; got.trial != on || on && !slices.Equal(got.args, []string{"exit", "0"}) {
				t.Fatalf("the stage ahead: %+v; want a trial start %v, with the deploy's arguments", got, on)
			}
			h.assertClean(t)
		})
	}
}

// vm_prestage false: sandboxes get files only at their deploy.
func TestPrestageOff(t *testing.T) {
	e := newPrestageEnv(t, false, 1)
	h, d, evs, hashA := e.h, e.d, e.evs, e.hashA
	runJob(t, h, evs, "a", hashA)
	runJob(t, h, evs, "a", hashA)
	h.assertClean(t)
	if c := d.calls(); len(c) != 2 || c[0].sandbox == c[1].sandbox {
		t.Fatalf("stages %v; want one per deploy", c)
	}
}

// A sandbox that a deploy is already waiting for gets nothing ahead: the
// deploy stages its own artifact into it at once.
func TestPrestageSkippedForAWaitingDeploy(t *testing.T) {
	e := newPrestageEnv(t, true, 1)
	h, d, evs, hashA, hashB := e.h, e.d, e.evs, e.hashA, e.hashB
	var took atomic.Value // the sandbox the last deploy ran in
	h.node.testHookBeforeAgentDeploy = func(sb sandbox.Sandbox, _ *agentapi.Deploy) { took.Store(sb.ID()) }
	runJob(t, h, evs, "a", hashA)
	eventually(t, 20*time.Second, "the refill to get a staged ahead", func() bool { return len(d.calls()) == 2 })

	// The pool's one sandbox (a ahead) goes to this deploy; its refill
	// waits at the gate until b's deploy waits for it.
	gate := make(chan struct{})
	d.mu.Lock()
	d.gate = gate
	d.mu.Unlock()
	runJob(t, h, evs, "a", hashA)
	done := make(chan struct{})
	go func() {
		defer close(done)
		runJob(t, h, evs, "b", hashB)
	}()
	eventually(t, 20*time.Second, "b's deploy to wait for a sandbox", func() bool { return h.node.pool.Status().Waiting == 1 })
	d.mu.Lock()
	d.gate = nil
	d.mu.Unlock()
	close(gate)
	<-done
	h.assertClean(t)
	// b alone went into the sandbox b's deploy waited for. The pool
	// started two for it (its target, and one for the waiting deploy):
	// the one the deploy did not take may get a ahead when it joins, if
	// that comes before b's deploy staged b, and b later.
	var into []string
	for _, c := range d.calls() {
		if c.sandbox == took.Load() {
			into = append(into, c.name)
		}
	}
	if !slices.Equal(into, []string{hashB}) {
		t.Fatalf("stages %v; want b alone into %s, the sandbox b's deploy waited for", d.calls(), took.Load())
	}
}

// A deploy takes a pooled sandbox that holds its artifact already over one
// that has waited longer without it.
func TestPrestagedSandboxPreferred(t *testing.T) {
	e := newPrestageEnv(t, true, 2)
	h, d, evs, hashA := e.h, e.d, e.evs, e.hashA
	h.node.testNoRestage = true // else the older one gets a too
	if err := h.node.pool.Wait(h.ctx(), 2); err != nil {
		t.Fatal(err)
	}
	runJob(t, h, evs, "a", hashA)
	// The refill got a ahead; the pool's other sandbox, older, has nothing.
	eventually(t, 20*time.Second, "the refill to get a staged ahead", func() bool {
		return len(d.calls()) == 2 && h.node.pool.Status().Ready == 2
	})
	ahead := d.calls()[1].sandbox
	var took atomic.Value
	h.node.testHookBeforeAgentDeploy = func(sb sandbox.Sandbox, _ *agentapi.Deploy) { took.Store(sb.ID()) }
	runJob(t, h, evs, "a", hashA)
	if took.Load() != ahead {
		t.Fatalf("the redeploy took sandbox %s; want %s, which holds a (stages %v)", took, ahead, d.calls())
	}
	h.assertClean(t)
	// It staged nothing of its own: the next stage is the refill's.
	if c := d.calls(); len(c) > 2 && c[2].sandbox == ahead {
		t.Fatalf("stages %v; the redeploy into %s staged again", c, ahead)
	}
}

// The sandboxes waiting in the pool are restaged after a deploy: the ones
// that joined before it, with no file or another artifact's, get the
// deployed artifact in place of theirs, so the next deploys of it (a
// service scaling out, or rolling over to a new version) stage nothing.
func TestRestagePooledSandboxes(t *testing.T) {
	e := newPrestageEnv(t, true, 2)
	h, d, evs, hashA, hashB := e.h, e.d, e.evs, e.hashA, e.hashB
	var took atomic.Value // the sandbox the last deploy ran in
	h.node.testHookBeforeAgentDeploy = func(sb sandbox.Sandbox, d *agentapi.Deploy) {
		took.Store(sb.ID())
		d.Unstage = nil // a process agent refuses it (TestPrestageLastArtifact)
	}
	if err := h.node.pool.Wait(h.ctx(), 2); err != nil {
		t.Fatal(err)
	}
	pooled := func() map[string]string { // live sandbox → its file staged ahead
		h.node.mu.Lock()
		defer h.node.mu.Unlock()
		m := map[string]string{}
		for id, sh := range h.node.sandboxes {
			m[id] = sh.ahead().hash
		}
		return m
	}
	allHold := func(hash string) func() bool {
		return func() bool {
			m := pooled()
			for _, got := range m {
				if got != hash {
					return false
				}
			}
			// node info tells it too.
			return len(m) == 2 && h.node.pool.Status().Ready == 2 && h.node.Info("default").Pool.StagedAhead == 2
		}
	}
	before := pooled()
	if len(before) != 2 {
		t.Fatalf("sandboxes before any deploy: %v", before)
	}

	runJob(t, h, evs, "a", hashA)
	eventually(t, 20*time.Second, "every pooled sandbox to hold a", allHold(hashA))
	// The one of the first two that the deploy did not take holds a: it
	// was restaged, since nothing was deployed when it joined.
	var older string
	for id := range before {
		if id != took.Load() {
			older = id
		}
	}
	if !slices.Contains(d.calls(), stageCall{older, hashA}) {
		t.Fatalf("stages %v; want a restaged into %s, which joined the pool before the deploy", d.calls(), older)
	}

	// Another artifact: the pooled sandbox that held a has it deleted and
	// gets b.
	runJob(t, h, evs, "b", hashB)
	eventually(t, 20*time.Second, "every pooled sandbox to hold b", allHold(hashB))
	var kept string // the pooled one the deploy of b did not take
	for id := range pooled() {
		if slices.Contains(d.calls(), stageCall{id, hashA}) {
			kept = id
		}
	}
	if kept == "" {
		t.Fatalf("no pooled sandbox held a before b's deploy (stages %v)", d.calls())
	}
	if u := d.unstageCalls(); !slices.Contains(u, stageCall{kept, hashA}) {
		t.Fatalf("unstages %v; want a deleted from %s before b went in", u, kept)
	}
	h.node.mu.Lock()
	work := filepath.Join(h.node.sandboxes[kept].dir, process.WorkDir)
	h.node.mu.Unlock()
	if _, err := os.Stat(filepath.Join(work, ".staged-"+hashA)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a in %s after its unstage: %v", work, err)
	}

	// The next deploy of b finds it there and stages nothing.
	n := len(d.calls())
	h.node.testHookBeforeAgentDeploy = func(sb sandbox.Sandbox, dep *agentapi.Deploy) {
		took.Store(sb.ID())
		if slices.ContainsFunc(d.calls()[n:], func(c stageCall) bool { return c.sandbox == sb.ID() }) || dep.StagedPath == "" {
			t.Errorf("the redeploy of b staged into %s (stages %v, staged path %q)", sb.ID(), d.calls()[n:], dep.StagedPath)
		}
		dep.Unstage = nil
	}
	runJob(t, h, evs, "b", hashB)
	h.assertClean(t)
}
