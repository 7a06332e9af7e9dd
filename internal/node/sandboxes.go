package node

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
)

// sandboxHandle is one sandbox the node started: in the pool, bound to a
// workload, or on its way out.
type sandboxHandle struct {
	n   *Node
	id  string
	dir string
	sb  sandbox.Sandbox

	handshake chan agentapi.Handshake // receives once

	mu       sync.Mutex
	workload *workload // set when bound
	gone     bool      // discarded: death is expected
	// exitReported: the agent reported its workload's end; the report is
	// being handled (agentReportedExit), so the sandbox's end is expected.
	exitReported bool
	// lastOutput is when the node last handled a log line or event of the
	// agent's: as good a sign of life as a ping's answer, which a workload
	// flooding its log can hold up behind its lines.
	lastOutput time.Time
	missed     int // consecutive failed pings
	// prestaged is the artifact staged into the sandbox while it waits for
	// a deploy (prestage, restage); zero when none. Read and set it with
	// ahead and setAhead.
	prestaged staged

	discardOnce sync.Once
}

// staged is a file staged into a sandbox: the artifact's hash, and the path
// its agent sees.
type staged struct{ hash, path string }

// ahead is the file staged into h while it waits for a deploy.
func (h *sandboxHandle) ahead() staged {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.prestaged
}

func (h *sandboxHandle) setAhead(s staged) {
	h.mu.Lock()
	h.prestaged = s
	h.mu.Unlock()
}

// newSandbox is the pool's factory: start a sandbox, wait for its agent's
// handshake, and hand it over ready. Every failure cleans up fully.
func (n *Node) newSandbox(ctx context.Context) (*sandboxHandle, error) {
	id := strings.ToLower(nuid.Next())
	dir := filepath.Join(n.cfg.StateDir, "sandboxes", id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("sandbox dir: %w", err)
	}
	seed, err := n.internal.AddAgent(id)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	h := &sandboxHandle{n: n, id: id, dir: dir, handshake: make(chan agentapi.Handshake, 1)}
	n.mu.Lock()
	n.sandboxes[id] = h
	n.mu.Unlock()

	fail := func(err error) (*sandboxHandle, error) {
		h.Discard()
		if ctx.Err() == nil {
			n.pub.Emit(api.SystemNamespace, api.EventSandboxFailed, api.SandboxFailedEvent{SandboxID: id,
				Driver: n.o.Driver.Name(), Message: err.Error()})
		}
		return nil, err
	}
	spec := sandbox.Spec{ID: id, Dir: dir, VCPU: n.cfg.MachineTemplate.VCPUCount, MemoryMiB: n.cfg.MachineTemplate.MemSizeMiB,
		Agent: agentapi.Metadata{SandboxID: id, NATSURL: n.internal.ClientURL(), Seed: seed}}
	sb, err := n.o.Driver.Start(ctx, spec)
	if err != nil {
		return fail(fmt.Errorf("start %s sandbox %s: %w", n.o.Driver.Name(), id, err))
	}
	h.mu.Lock()
	h.sb = sb
	h.mu.Unlock()
	n.log.Info("Machine started", append([]any{keyVMID, id, "driver", n.o.Driver.Name(), "pid", sb.PID()},
		sandbox.LogAttrs(sb)...)...)

	timeout := time.NewTimer(n.cfg.HandshakeTimeout.D())
	defer timeout.Stop()
	select {
	case <-h.handshake:
	case <-sb.Done():
		return fail(exitedBeforeHandshake(id, sb))
	case <-timeout.C:
		return fail(fmt.Errorf("sandbox %s: no agent handshake within %s", id, n.cfg.HandshakeTimeout.D()))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	n.prestage(ctx, h)
	n.log.Info("Adding new "+n.sandboxNoun(false)+" to warm pool", keyVMID, id, "driver", n.o.Driver.Name())
	n.bg.Add(1)
	go h.watch()
	return h, nil
}

// exitedBeforeHandshake says why sb ended before its agent handshook: how
// it ended and the last lines of its console, since its dir (and the log
// there) goes with it.
func exitedBeforeHandshake(id string, sb sandbox.Sandbox) error {
	how := "it ended by itself (a guest that reset or powered off)"
	if err := sb.Err(); err != nil {
		how = err.Error()
	}
	msg := fmt.Sprintf("sandbox %s exited before its agent handshook: %s", id, how)
	if tail := sandbox.ConsoleTail(sb, consoleTailLines); tail != "" {
		msg += "; its console ended with: " + tail
	}
	return errors.New(msg)
}

// outputWait bounds how long a sandbox's death waits for the output its
// agent sent before (awaitOutput).
const outputWait = 30 * time.Second

// consoleTailLines is how much of a dead guest's console an error quotes.
const consoleTailLines = 5

// prestage stages the artifact last deployed into a sandbox of this kind
// into h, before it joins the pool, when its driver says that is worth it
// (sandbox.Prestager), vm_prestage is on and no deploy is waiting for it.
// It is best effort: an artifact the store no longer has, or a failed copy
// (logged at debug level, since every refill would repeat it), leaves h
// without one, and a deploy then stages its own.
func (n *Node) prestage(ctx context.Context, h *sandboxHandle) {
	ps, ok := h.sb.(sandbox.Prestager)
	if !ok || !n.cfg.Prestage() || !ps.Prestage() {
		return
	}
	hash, args := n.lastArtifact()
	// A deploy waiting for a sandbox takes this one the moment it joins the
	// pool and stages its own artifact: a file staged ahead would only
	// delay it, or be the same copy made earlier.
	if hash == "" || n.pool.Status().Waiting > 0 {
		return
	}
	src, ok := n.artifacts.hold(hash)
	if !ok {
		return
	}
	defer n.artifacts.release(hash)
	t0 := time.Now()
	if err := n.stageAhead(ctx, h, ps, src, hash, args); err != nil {
		n.log.Debug("Staging the last artifact ahead failed; a deploy will stage its own", keyVMID, h.id, "error", err)
		return
	}
	n.log.Debug("Artifact staged ahead", keyVMID, h.id, "hash", hash, "took", time.Since(t0))
}

// stageAhead stages src, the artifact hash, into h, which waits for a
// deploy, and records it there. With vm_trial_start, a sandbox that can
// then gives it a trial start with args, its last deploy's.
func (n *Node) stageAhead(ctx context.Context, h *sandboxHandle, ps sandbox.Prestager, src, hash string, args []string) error {
	var path string
	var err error
	if ts, ok := ps.(sandbox.TrialStarter); ok && n.cfg.TrialStart() {
		path, err = ts.StageTrial(ctx, src, hash, args)
	} else {
		path, err = ps.Stage(ctx, src, hash)
	}
	if err != nil {
		return err
	}
	h.setAhead(staged{hash, path})
	return nil
}

// lastArtifact is the hash of the artifact last staged into a sandbox that
// takes files ahead ("" when none), and its last deploy's arguments.
func (n *Node) lastArtifact() (string, []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.lastStaged, n.lastArgs
}

// kickRestage asks restageLoop for a pass, when vm_prestage is on.
func (n *Node) kickRestage() {
	if !n.cfg.Prestage() {
		return
	}
	select {
	case n.restageKick <- struct{}{}:
	default:
	}
}

// restageLoop keeps the sandboxes waiting in the pool staged with the
// artifact deployed last, as prestage does for new ones. Without it the
// sandboxes that joined the pool before a deploy (all of them, on a node
// that has just started or after a new version's first deploy) hold no file
// or the old one, and the next deploys of the new artifact, a service
// scaling out or rolling over, each stage it while their caller waits. A
// pass starts after a deploy, held back as long as the pool's refill is
// (the deployed workload is starting on the same cores), and restages one
// sandbox after another, each lent by the pool for the time it takes.
func (n *Node) restageLoop() {
	defer n.bg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.restageKick:
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(refillDelay(n.o.Driver)):
		}
		tried := map[*sandboxHandle]bool{}
		for n.restage(tried) {
		}
	}
}

// restage restages one sandbox waiting in the pool that takes files ahead,
// has not been tried in this pass and does not hold the artifact last
// staged; it reports whether it found one. The pool lends none while a
// deploy waits for a sandbox. The old file is deleted first, so the guest
// never holds both. Best effort, as prestage is: a sandbox it fails goes
// back to the pool holding no file (or, if even the delete failed, the one
// it had, which a deploy then unstages as before).
func (n *Node) restage(tried map[*sandboxHandle]bool) bool {
	if n.testNoRestage {
		return false
	}
	hash, args := n.lastArtifact()
	if hash == "" {
		return false
	}
	// h.sb is set before h joins the pool, and stays.
	h, ok := n.pool.Lend(func(h *sandboxHandle) bool {
		ps, ok := h.sb.(sandbox.Prestager)
		return ok && !tried[h] && h.ahead().hash != hash && ps.Prestage()
	})
	if !ok {
		return false
	}
	defer n.pool.Return(h)
	tried[h] = true
	src, ok := n.artifacts.hold(hash)
	if !ok {
		return false
	}
	defer n.artifacts.release(hash)
	ps := h.sb.(sandbox.Prestager)
	old := h.ahead()
	t0 := time.Now()
	if old.hash != "" && !n.unstage(n.ctx, h, old) {
		return true // left as it was
	}
	if err := n.stageAhead(n.ctx, h, ps, src, hash, args); err != nil {
		n.log.Debug("Restaging a pooled sandbox failed; a deploy will stage its own", keyVMID, h.id, "error", err)
		return true
	}
	n.log.Debug("Pooled sandbox restaged", keyVMID, h.id, "hash", hash, "replaced", old.hash, "took", time.Since(t0))
	return true
}

// unstage deletes old, the file staged ahead into h, before another one
// goes in (a restage, or a deploy of another artifact), so the guest never
// holds both: two artifacts' worth of guest RAM, which a small VM may not
// have. It reports whether the file is gone. If not, the sandbox still
// holds it: a restage leaves the sandbox as it was, and a deploy has its
// agent delete it (agentapi.Deploy.Unstage).
func (n *Node) unstage(ctx context.Context, h *sandboxHandle, old staged) bool {
	ps, ok := h.sb.(sandbox.Prestager)
	if !ok {
		return false
	}
	if err := ps.Unstage(ctx, old.hash); err != nil {
		n.log.Debug("Deleting the artifact staged ahead failed", keyVMID, h.id, "hash", old.hash, "error", err)
		return false
	}
	h.setAhead(staged{})
	return true
}

// watch reacts to a sandbox's exit: a pooled one is dropped (the pool
// refills), a bound one takes its workload down (and maybe back up).
func (h *sandboxHandle) watch() {
	defer h.n.bg.Done()
	select {
	case <-h.sb.Done():
	case <-h.n.ctx.Done():
		return
	}
	h.mu.Lock()
	expected, w := h.gone, h.workload
	h.mu.Unlock()
	if expected {
		return
	}
	n := h.n
	if w != nil {
		n.awaitOutput(h.id, outputWait)
		h.mu.Lock()
		reported := h.exitReported
		h.mu.Unlock()
		if reported { // an agent that ended after its workload, as it does
			h.Discard()
			return
		}
	}
	reason := fmt.Sprintf("sandbox exited: %v", h.sb.Err())
	tail := sandbox.ConsoleTail(h.sb, consoleTailLines)
	if tail != "" {
		reason += "; its console ended with: " + tail
	}
	n.log.Warn("sandbox died", keyVMID, h.id, "error", h.sb.Err(), "console", tail)
	n.pub.Emit(api.SystemNamespace, api.EventAgentStopped, api.AgentStoppedEvent{Message: reason, Code: -1, SandboxID: h.id})
	if n.pool.Remove(h) {
		h.Discard()
		return
	}
	if w != nil {
		n.workloadEnded(w, h, -1, reason)
	}
	h.Discard()
}

// Discard stops the sandbox (if running), revokes its credentials and
// removes its files. Safe to call many times.
func (h *sandboxHandle) Discard() {
	h.discardOnce.Do(func() {
		h.mu.Lock()
		h.gone = true
		sb := h.sb
		h.mu.Unlock()
		if sb != nil {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			if err := sb.Stop(ctx); err != nil {
				h.n.log.Warn("sandbox stop", keyVMID, h.id, "error", err)
			}
			cancel()
		}
		h.n.internal.RemoveAgent(h.id)
		if err := os.RemoveAll(h.dir); err != nil {
			h.n.log.Warn("remove sandbox dir", "dir", h.dir, "error", err)
		}
		h.n.mu.Lock()
		delete(h.n.sandboxes, h.id)
		h.n.mu.Unlock()
	})
}

func (h *sandboxHandle) request(ctx context.Context, subject string, req any, resp any) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	m, err := h.n.inc.RequestWithContext(ctx, subject, b)
	if err != nil {
		return fmt.Errorf("agent %s: %w", h.id, err)
	}
	if resp != nil {
		if err := json.Unmarshal(m.Data, resp); err != nil {
			return fmt.Errorf("agent %s: bad reply: %w", h.id, err)
		}
	}
	return nil
}

// subscribeAgents listens to every agent on the internal server. The
// sandbox id in a subject is trustworthy: agent users may only publish under
// their own id.
func (n *Node) subscribeAgents() error {
	subs := []struct {
		subject string
		h       nats.MsgHandler
	}{
		{agentapi.HandshakeSubject("*"), n.onHandshake},
		{agentapi.ArtifactSubject("*"), n.onArtifact},
		{agentapi.OutputSubject("*"), n.onAgentOutput},
	}
	for _, s := range subs {
		if _, err := n.inc.Subscribe(s.subject, s.h); err != nil {
			return fmt.Errorf("subscribe %s: %w", s.subject, err)
		}
	}
	return n.inc.Flush()
}

func sandboxIDOf(subject string) string { return api.Token(subject, 1) }

func (n *Node) handle(id string) *sandboxHandle {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sandboxes[id]
}

func (n *Node) onHandshake(m *nats.Msg) {
	id := sandboxIDOf(m.Subject)
	var hs agentapi.Handshake
	reply := agentapi.HandshakeReply{Entropy: make([]byte, 32), LogSync: true}
	_, _ = rand.Read(reply.Entropy)
	h := n.handle(id)
	switch err := json.Unmarshal(m.Data, &hs); {
	case err != nil:
		reply.Error = "malformed handshake: " + err.Error()
	case h == nil:
		reply.Error = "unknown sandbox " + id
	case hs.SandboxID != id:
		reply.Error = fmt.Sprintf("handshake names sandbox %q on the subject of %q", hs.SandboxID, id)
	default:
		reply.OK = true
	}
	reply.Now = time.Now().UTC() // as late as can be: the agent sets its clock from it
	b, _ := json.Marshal(reply)
	_ = m.Respond(b)
	if !reply.OK {
		n.log.Warn("agent handshake refused", keyVMID, id, "error", reply.Error)
		return
	}
	n.log.Info("Received agent handshake", keyVMID, id, "message", hs.Message, "agent_version", hs.AgentVersion)
	select {
	case h.handshake <- hs:
		n.pub.Emit(api.SystemNamespace, api.EventAgentStarted, api.AgentStartedEvent{AgentVersion: hs.AgentVersion, SandboxID: id})
	default: // a repeated handshake (reconnect) changes nothing
	}
}

func (n *Node) onArtifact(m *nats.Msg) {
	id := sandboxIDOf(m.Subject)
	fail := func(msg string) {
		r := nats.NewMsg(m.Reply)
		r.Header.Set(agentapi.ErrorHeader, msg)
		_ = m.RespondMsg(r)
	}
	h := n.handle(id)
	if h == nil {
		fail("unknown sandbox")
		return
	}
	h.mu.Lock()
	w := h.workload
	h.mu.Unlock()
	if w == nil {
		fail("no workload is being deployed to this sandbox")
		return
	}
	var req agentapi.ArtifactChunk
	if err := json.Unmarshal(m.Data, &req); err != nil || req.Offset < 0 || req.Length <= 0 {
		fail("malformed artifact request")
		return
	}
	f, err := os.Open(w.artifactPath)
	if err != nil {
		fail("artifact unavailable: " + err.Error())
		return
	}
	defer f.Close()
	buf := make([]byte, min(req.Length, agentapi.ChunkSize))
	k, err := f.ReadAt(buf, req.Offset)
	if err != nil && !errors.Is(err, io.EOF) {
		fail("read artifact: " + err.Error())
		return
	}
	_ = m.Respond(buf[:k])
}

// onAgentOutput handles logs and events from one subscription so that an
// agent's last log lines are published before its workload's end.
func (n *Node) onAgentOutput(m *nats.Msg) {
	kind := api.Token(m.Subject, 3)
	if kind == "sync" {
		// Handled in order with the agent's output: everything sent
		// before it has been handled. Agents ask it (their log flow
		// control), and so does the node itself (awaitOutput).
		_ = m.Respond(nil)
		return
	}
	h := n.handle(sandboxIDOf(m.Subject))
	if h == nil {
		return
	}
	h.mu.Lock()
	h.lastOutput = time.Now()
	w := h.workload
	h.mu.Unlock()
	if w == nil {
		return
	}
	switch kind {
	case "logs":
		n.onLog(w, m)
	case "events":
		n.onAgentEvent(h, w, m)
	}
}

// awaitOutput returns once the node has handled what agent id had sent
// before now, or after d. An agent reports its workload's end, then ends;
// its process can be seen gone while that report still waits behind the
// workload's last output (200,000 log lines take seconds), so a sandbox's
// death is judged after it.
func (n *Node) awaitOutput(id string, d time.Duration) {
	// The node asks the sync the agents ask (agent/logflow.go): its answer,
	// in order with the agent's output, comes once that is handled.
	ctx, cancel := context.WithTimeout(n.ctx, d)
	defer cancel()
	if _, err := n.inc.RequestWithContext(ctx, agentapi.SyncSubject(id), nil); errors.Is(err, context.DeadlineExceeded) {
		n.log.Warn("agent output not handled in time", keyVMID, id, "waited", d)
	}
}

// onLog publishes a log line of w's agent on the control plane.
func (n *Node) onLog(w *workload, m *nats.Msg) {
	var line agentapi.LogLine
	if err := json.Unmarshal(m.Data, &line); err != nil {
		return
	}
	level := slog.LevelInfo
	if line.Stream == "stderr" {
		level = slog.LevelError
	}
	if line.Time.IsZero() {
		line.Time = time.Now()
	}
	n.pub.Log(w.ns, w.id, w.name, line.Text, level, line.Time.UTC())
}

// onAgentEvent handles an event of the agent of h, which runs w.
func (n *Node) onAgentEvent(h *sandboxHandle, w *workload, m *nats.Msg) {
	var ev agentapi.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		return
	}
	if ev.Type != agentapi.EventWorkloadExited {
		return
	}
	msg := ev.Message
	if ev.OutOfMemory && !sandbox.IsUnsafe(n.o.Driver) {
		msg += fmt.Sprintf("; the VM has %d MiB (machine_template.memsize_mib)", n.cfg.MachineTemplate.MemSizeMiB)
	}
	h.mu.Lock()
	h.exitReported = true // before watch's barrier comes back (awaitOutput)
	h.mu.Unlock()
	go n.agentReportedExit(w, h, ev.Code, msg)
}

// pingAgents pings the agent of every bound sandbox; an agent that misses
// three pings in a row is treated as dead.
func (n *Node) pingAgents() {
	defer n.bg.Done()
	every := n.cfg.AgentPingInterval.D()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		var hs []*sandboxHandle
		for _, h := range n.sandboxes {
			hs = append(hs, h)
		}
		n.mu.Unlock()
		for _, h := range hs {
			h.mu.Lock()
			w, gone := h.workload, h.gone
			h.mu.Unlock()
			if w == nil || gone {
				continue
			}
			w.mu.Lock()
			running := w.running && w.sandbox == h
			w.mu.Unlock()
			if !running { // still starting: start's own timeout covers it
				continue
			}
			ctx, cancel := context.WithTimeout(n.ctx, min(every, 2*time.Second))
			var r agentapi.Reply
			err := h.request(ctx, agentapi.PingSubject(h.id), struct{}{}, &r)
			cancel()
			if n.testPingsFail.Load() {
				err = errors.New("test: pings fail")
			}
			h.mu.Lock()
			if err != nil && time.Since(h.lastOutput) > every {
				h.missed++
			} else {
				h.missed = 0
			}
			missed := h.missed
			h.mu.Unlock()
			if missed >= 3 {
				n.log.Warn("agent silent; treating it as dead", keyVMID, h.id, keyWorkload, w.id)
				n.pub.Emit(api.SystemNamespace, api.EventAgentStopped, api.AgentStoppedEvent{
					Message: "agent stopped answering pings", Code: -1, SandboxID: h.id})
				go n.workloadEnded(w, h, -1, "agent stopped answering pings")
			}
		}
	}
}
