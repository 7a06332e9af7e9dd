package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nuid"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/workload/native"
)

// workload is one deployed workload. Its id outlives sandboxes: an essential
// workload restarted in a fresh sandbox keeps it.
type workload struct {
	id, ns, name, typ, hash, description string
	issuer, jti                          string
	iat                                  int64
	essential                            bool
	argv                                 []string
	env                                  map[string]string
	size                                 int64
	artifactPath                         string
	deployedAt                           time.Time

	mu         sync.Mutex
	sandbox    *sandboxHandle // nil while (re)starting or after the end
	running    bool
	stopping   bool
	stopReason string
	retries    int
	// artifactHeld (guarded by n.mu, not mu) says the workload holds a
	// reference on its artifact, which forget gives back once.
	artifactHeld bool
	// earlyExit holds an exit the agent reported before start saw the
	// agent's deploy reply (the two travel on different subscriptions).
	earlyExit *exitReport
}

type exitReport struct {
	code int
	msg  string
}

// Deploy implements controlapi.Node.
func (n *Node) Deploy(ctx context.Context, ns string, req api.DeployRequest) (api.RunResponse, error) {
	n.mu.Lock()
	stopping, ld := n.stopping, n.lameDuck
	n.mu.Unlock()
	switch {
	case stopping:
		return api.RunResponse{}, ErrShuttingDown
	case ld:
		return api.RunResponse{}, ErrLameDuck
	}
	v, env, err := n.checkRequest(req)
	if err != nil {
		return api.RunResponse{}, err
	}
	w := &workload{id: strings.ToLower(nuid.Next()), ns: ns, name: v.subject, typ: req.WorkloadType, hash: v.hash,
		description: deref(req.Description), issuer: v.issuer, jti: v.jti, iat: v.iat,
		essential: deref(req.Essential), argv: req.Argv, env: env}

	// Reserve the slot now so concurrent deploys cannot overshoot the limit.
	n.mu.Lock()
	if len(n.workloads) >= n.cfg.NodeLimits.MaxWorkloads {
		n.mu.Unlock()
		return api.RunResponse{}, fmt.Errorf("%w: it runs %d workloads (node_limits.max_workloads)", ErrLimit, n.cfg.NodeLimits.MaxWorkloads)
	}
	n.workloads[w.id] = w
	n.mu.Unlock()
	release := func() { n.forget(w) }

	t0 := time.Now()
	if w.artifactPath, w.size, err = n.fetchArtifact(ctx, req, v.hash); err != nil {
		release()
		return api.RunResponse{}, err
	}
	if n.testHookAfterFetch != nil {
		n.testHookAfterFetch(w)
	}
	// A stop that came while the artifact was fetched has forgotten w:
	// the reference just taken is this deploy's to give back.
	n.mu.Lock()
	_, kept := n.workloads[w.id]
	w.artifactHeld = kept
	n.mu.Unlock()
	if !kept {
		n.artifacts.release(v.hash)
		return api.RunResponse{}, fmt.Errorf("%w: stopped while its artifact was fetched", ErrStart)
	}
	// A file that cannot run where this node runs workloads is refused
	// before it takes a sandbox.
	if w.typ == api.WorkloadNative {
		if err := native.Check(w.artifactPath, sandbox.IsUnsafe(n.o.Driver)); err != nil {
			release()
			return api.RunResponse{}, fmt.Errorf("%w: %s %v", ErrArtifact, w.name, err)
		}
	}
	t1 := time.Now()
	w.deployedAt = t1
	if err := n.start(ctx, w); err != nil {
		release()
		return api.RunResponse{}, err
	}
	n.log.Info("workload deployed", keyWorkload, w.id, "name", w.name, keyNS, ns, "bytes", w.size,
		"fetch", t1.Sub(t0), "start", time.Since(t1))
	n.pub.Emit(ns, api.EventWorkloadDeployed, api.WorkloadDeployedEvent{WorkloadName: w.name, TotalBytes: w.size, WorkloadID: w.id})
	return api.RunResponse{Started: true, ID: w.id, Issuer: w.issuer, Name: w.name}, nil
}

// start puts w into a sandbox from the pool and waits until its agent runs
// it. On failure the sandbox is discarded.
func (n *Node) start(ctx context.Context, w *workload) error {
	// A sandbox that holds the artifact already (staged ahead) starts it
	// sooner: take one if the pool has it.
	h, err := n.pool.TakePreferring(ctx, func(h *sandboxHandle) bool { return h.ahead().hash == w.hash })
	if err != nil {
		st := n.pool.Status()
		if st.LastError != "" {
			return fmt.Errorf("%w: %v (last sandbox failure: %s)", ErrSandbox, err, st.LastError)
		}
		return fmt.Errorf("%w: %v", ErrSandbox, err)
	}
	h.mu.Lock()
	h.workload = w
	h.mu.Unlock()
	// While starting, w names its sandbox but is not running: workloadEnded
	// leaves it to this function, which sees every failure itself.
	w.mu.Lock()
	w.sandbox, w.running, w.earlyExit = h, false, nil
	w.mu.Unlock()

	user, pass := n.internal.AddWorkloadUser(w.id)
	// fail undoes the above: w gets no sandbox, and h is discarded.
	fail := func(err error) error {
		w.mu.Lock()
		if w.sandbox == h {
			w.sandbox = nil
		}
		w.mu.Unlock()
		h.mu.Lock()
		h.workload = nil
		h.mu.Unlock()
		h.Discard()
		n.internal.RemoveWorkloadUser(w.id)
		return err
	}
	d := agentapi.Deploy{WorkloadID: w.id, Name: w.name, Namespace: w.ns, Type: w.typ, Argv: w.argv, Env: w.env,
		Hash: w.hash, Size: w.size, NATSUser: user, NATSPassword: pass}

	if st, ok := h.sb.(sandbox.Stager); ok && !n.testNoStaging {
		pre := h.ahead()
		if pre.hash == w.hash {
			d.StagedPath = pre.path // staged ahead (prestage)
		} else {
			if pre.hash != "" && !n.unstage(ctx, h, pre) {
				d.Unstage = []string{pre.path} // the agent deletes it
			}
			d.StagedPath, err = st.Stage(ctx, w.artifactPath, w.hash)
			if errors.Is(err, sandbox.ErrNoRoom) {
				return fail(fmt.Errorf("%w: %s: %v", ErrArtifact, w.name, err))
			}
			if err != nil {
				n.log.Warn("staging the artifact failed; the agent will fetch it over NATS", keyVMID, h.id, "error", err)
				d.StagedPath = ""
			}
		}
		if _, ahead := st.(sandbox.Prestager); ahead && d.StagedPath != "" {
			n.mu.Lock()
			n.lastStaged, n.lastArgs = w.hash, w.argv
			n.mu.Unlock()
			n.kickRestage()
		}
	}
	if n.testHookBeforeAgentDeploy != nil {
		n.testHookBeforeAgentDeploy(h.sb, &d)
	}
	// A sandbox that dies mid-deploy must fail the request at once.
	rctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	go func() {
		select {
		case <-h.sb.Done():
			cancel()
		case <-rctx.Done():
		}
	}()
	var r agentapi.Reply
	err = h.request(rctx, agentapi.DeploySubject(h.id), d, &r)
	switch {
	case err == nil && !r.OK:
		err = errors.New(r.Error)
	case err != nil && h.sb != nil && isDone(h.sb.Done()):
		err = fmt.Errorf("sandbox %s died during the deploy: %v", h.id, h.sb.Err())
	}
	w.mu.Lock()
	if err == nil && w.stopping {
		err = errors.New("stopped while it was being deployed")
	}
	if err != nil {
		if w.sandbox == h {
			w.sandbox = nil
		}
		w.mu.Unlock()
		return fail(fmt.Errorf("%w: the agent could not start it: %v", ErrStart, err))
	}
	w.running = true
	early := w.earlyExit
	w.earlyExit = nil
	w.mu.Unlock()
	if early != nil {
		go n.workloadEnded(w, h, early.code, early.msg)
	}
	return nil
}

// agentReportedExit routes an agent's workload_exited: to workloadEnded
// once the workload runs, or aside for start to hand on.
func (n *Node) agentReportedExit(w *workload, h *sandboxHandle, code int, msg string) {
	w.mu.Lock()
	if w.sandbox == h && !w.running {
		w.earlyExit = &exitReport{code: code, msg: msg}
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	n.workloadEnded(w, h, code, msg)
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// workloadEnded handles the end of w's run in h, whatever the cause: exit,
// undeploy, agent or sandbox death. The first report wins; essential
// workloads that were not stopped on purpose are restarted with backoff.
func (n *Node) workloadEnded(w *workload, h *sandboxHandle, code int, msg string) {
	w.mu.Lock()
	if w.sandbox != h || h == nil || !w.running {
		// Another report came first, or the workload is still starting
		// and start will see the failure.
		w.mu.Unlock()
		return
	}
	w.sandbox, w.running = nil, false
	stopping := w.stopping
	if stopping {
		code, msg = 0, w.stopReason
	}
	w.mu.Unlock()

	h.Discard()
	n.internal.RemoveWorkloadUser(w.id)
	n.log.Info("workload ended", keyWorkload, w.id, "name", w.name, "code", code, "message", msg)
	n.pub.Emit(w.ns, api.EventWorkloadUndeployed, api.WorkloadUndeployedEvent{WorkloadName: w.name, Code: code, Message: msg, WorkloadID: w.id})

	n.mu.Lock()
	shutting := n.stopping
	n.mu.Unlock()
	if w.essential && !stopping && !shutting {
		n.bg.Add(1)
		go n.restart(w)
		return
	}
	n.forget(w)
}

// forget drops w and gives back its artifact reference, once: a stop
// between restarts and the restart loop both get here, and so does a stop
// of a deploy still fetching, which holds no reference yet.
func (n *Node) forget(w *workload) {
	n.mu.Lock()
	delete(n.workloads, w.id)
	held := w.artifactHeld
	w.artifactHeld = false
	n.mu.Unlock()
	if held {
		n.artifacts.release(w.hash)
	}
}

// restart brings an essential workload back in a fresh sandbox, with
// exponential backoff between attempts.
func (n *Node) restart(w *workload) {
	defer n.bg.Done()
	for {
		w.mu.Lock()
		w.retries++
		attempt, stopping := w.retries, w.stopping
		w.mu.Unlock()
		if stopping {
			n.forget(w)
			return
		}
		delay := min(time.Duration(1<<min(attempt-1, 5))*250*time.Millisecond, 30*time.Second)
		n.log.Info("restarting essential workload", keyWorkload, w.id, "name", w.name, "retry_count", attempt, "in", delay)
		select {
		case <-time.After(delay):
		case <-n.ctx.Done():
			n.forget(w)
			return
		}
		// A stop during the backoff found no sandbox to stop: honour it here.
		w.mu.Lock()
		stopping = w.stopping
		w.mu.Unlock()
		if stopping {
			n.forget(w)
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, 2*time.Minute)
		err := n.start(ctx, w)
		cancel()
		if err == nil { // (a stop during start makes start fail; the loop then forgets w)
			n.pub.Emit(w.ns, api.EventWorkloadDeployed, api.WorkloadDeployedEvent{WorkloadName: w.name, TotalBytes: w.size, WorkloadID: w.id})
			return
		}
		n.log.Warn("essential workload restart failed", keyWorkload, w.id, "error", err)
	}
}

// undeploy stops w on purpose: ask the agent, then the sandbox.
func (n *Node) undeploy(ctx context.Context, w *workload, reason string) {
	w.mu.Lock()
	w.stopping, w.stopReason = true, reason
	h := w.sandbox
	w.mu.Unlock()
	if h == nil { // between restarts; restart() forgets it
		n.forget(w)
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var r agentapi.Reply
	if err := h.request(rctx, agentapi.UndeploySubject(h.id), agentapi.Undeploy{Reason: reason}, &r); err != nil {
		n.log.Warn("agent did not confirm undeploy; stopping its sandbox", keyVMID, h.id, "error", err)
	}
	select {
	case <-h.sb.Done():
	case <-rctx.Done():
	}
	cancel()
	n.workloadEnded(w, h, 0, reason)
	// The agent's exit event may have ended the workload first, cleaning up
	// in its own goroutine; wait for that, so a stop is answered only once
	// the sandbox and its files are gone.
	h.Discard()
}

// StopWorkload implements controlapi.Node.
func (n *Node) StopWorkload(ctx context.Context, ns string, req api.StopRequest) (api.StopResponse, error) {
	if req.TargetNode != "" && req.TargetNode != n.id {
		return api.StopResponse{}, fmt.Errorf("%w: target_node is %s, this node is %s", ErrWrongNode, req.TargetNode, n.id)
	}
	n.mu.Lock()
	w := n.workloads[req.WorkloadID]
	n.mu.Unlock()
	if w == nil || w.ns != ns {
		return api.StopResponse{}, fmt.Errorf("%w: %q in namespace %s on node %s", ErrUnknownWorkload, req.WorkloadID, ns, n.id)
	}
	v, err := n.verifyJWT(req.WorkloadJWT)
	if err != nil {
		return api.StopResponse{}, err
	}
	switch {
	case v.issuer != w.issuer:
		return api.StopResponse{}, fmt.Errorf("%w: the stop JWT is issued by %s, the workload by another issuer", ErrStopDenied, v.issuer)
	case v.subject != w.name:
		return api.StopResponse{}, fmt.Errorf("%w: the stop JWT is for workload %q, not %q", ErrStopDenied, v.subject, w.name)
	case v.jti == w.jti || v.iat == w.iat:
		return api.StopResponse{}, fmt.Errorf("%w: the stop JWT replays the deploy JWT (same jti or iat); sign a new one", ErrStopDenied)
	}
	n.undeploy(ctx, w, "stopped by request")
	return api.StopResponse{Stopped: true, ID: w.id, Issuer: w.issuer, Name: w.name}, nil
}
