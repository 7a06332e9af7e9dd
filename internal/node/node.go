// Package node is a nex node: it answers the control API on the control
// plane, runs the internal NATS server its agents and workloads use, keeps a
// warm pool of sandboxes, and manages the workloads deployed to it.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/controlapi"
	"github.com/nex-engine/nex/internal/events"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/pool"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Log keys.
const (
	keyVMID     = "vmid"
	keyWorkload = "workload_id"
	keyNS       = "namespace"
)

// defaultRefillDelay holds back the pool refill a deploy causes
// (pool.Options.RefillDelay) for drivers that do not say otherwise
// (sandbox.RefillPacer): a workload in a microVM under TCG needs ≈ 0.8 s to
// answer, and a clone restoring next to it made that 1.0–1.2 s
// (docs/BENCHMARKS.md). A variable so the VM benchmark can compare.
var defaultRefillDelay = time.Second

func refillDelay(d sandbox.Driver) time.Duration {
	if p, ok := d.(sandbox.RefillPacer); ok {
		return p.RefillDelay()
	}
	return defaultRefillDelay
}

// Options are what a node is made of besides its config.
type Options struct {
	Config   *config.Config
	Identity Identity
	// Control is the control-plane connection (the node does not close it).
	Control *nats.Conn
	// Driver starts sandboxes.
	Driver sandbox.Driver
	// LeafURL links the internal workload account to the control plane;
	// nil leaves workloads on the internal server only.
	LeafURL *url.URL
	Version string
	Log     *slog.Logger
}

// Node is a running node.
type Node struct {
	o       Options
	cfg     *config.Config
	log     *slog.Logger
	id      string
	started time.Time

	internal  *natsd.Internal
	inc       *nats.Conn // node's own connection to the internal server
	pub       *events.Publisher
	api       *controlapi.Server
	pool      *pool.Pool[*sandboxHandle]
	artifacts *artifactStore

	mu        sync.Mutex
	lameDuck  bool
	stopping  bool
	sandboxes map[string]*sandboxHandle // every live sandbox, by id
	workloads map[string]*workload      // by workload id
	// lastStaged is the hash of the artifact last staged into a sandbox
	// that takes files ahead (sandbox.Prestager): new ones get it before
	// they join the pool (prestage), and those waiting there are restaged
	// with it (restage, woken by restageKick). lastArgs are the arguments
	// of its last deploy, for its trial start.
	lastStaged  string
	lastArgs    []string
	restageKick chan struct{}

	// testHookBeforeAgentDeploy lets tests inject faults between taking a
	// sandbox and handing it the workload, and see (or spoil) the request.
	testHookBeforeAgentDeploy func(sandbox.Sandbox, *agentapi.Deploy)
	// testHookAfterFetch runs once a deploy holds its artifact, before it
	// checks that it was not stopped meanwhile.
	testHookAfterFetch func(*workload)
	// testNoRestage leaves the sandboxes waiting in the pool as they joined
	// it (restage), so a test can see which one a deploy prefers.
	testNoRestage bool
	// testNoStaging makes every deploy stream its artifact over NATS, the
	// path VM sandboxes take.
	testNoStaging bool
	// testPingsFail makes every ping of an agent count as unanswered.
	testPingsFail atomic.Bool

	bg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{}
}

// New checks the options; Start brings the node up.
func New(o Options) (*Node, error) {
	switch {
	case o.Config == nil:
		return nil, errors.New("node: no config")
	case o.Control == nil:
		return nil, errors.New("node: no control-plane connection")
	case o.Driver == nil:
		return nil, errors.New("node: no sandbox driver")
	case o.Identity.Key == nil || o.Identity.XKey == nil:
		return nil, errors.New("node: no identity")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Version == "" {
		o.Version = "0.0.0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Node{o: o, cfg: o.Config, log: o.Log, id: o.Identity.ID(), sandboxes: map[string]*sandboxHandle{},
		workloads: map[string]*workload{}, restageKick: make(chan struct{}, 1), ctx: ctx, cancel: cancel,
		done: make(chan struct{})}, nil
}

// ID is the node's public nkey.
func (n *Node) ID() string { return n.id }

// InternalURL is the internal server's client URL (tests, diagnostics).
func (n *Node) InternalURL() string { return n.internal.ClientURL() }

// sandboxNoun is what the node's log lines call a sandbox: "VM" for the
// isolating drivers, as in the seed's log ("Virtual machine manager
// starting", "Adding new VM to warm pool"), and "sandbox" for the process
// driver, which starts no machine.
func (n *Node) sandboxNoun(manager bool) string {
	switch {
	case sandbox.IsUnsafe(n.o.Driver) && manager:
		return "Sandbox"
	case sandbox.IsUnsafe(n.o.Driver):
		return "sandbox"
	case manager:
		return "Virtual machine"
	}
	return "VM"
}

// Start brings the node up in the seed's order and returns once it answers
// on the control plane; the warm pool fills in the background.
func (n *Node) Start() error {
	n.started = time.Now()
	n.log.Info(n.sandboxNoun(true)+" manager starting", "driver", n.o.Driver.Name(), "pool_size", n.cfg.PoolSize())
	sandboxRoot := filepath.Join(n.cfg.StateDir, "sandboxes")
	if killed, err := sandbox.Reap(sandboxRoot); err != nil {
		n.log.Warn("could not clean up after a previous node", "dir", sandboxRoot, "error", err)
	} else if len(killed) > 0 {
		n.log.Warn("stopped sandboxes a previous node left running", "pids", killed)
	}
	if err := os.MkdirAll(sandboxRoot, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	artifacts, err := newArtifactStore(n.artifactDir(), DefaultArtifactCacheBytes)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	n.artifacts = artifacts

	in, err := natsd.StartInternal(natsd.InternalOptions{
		StoreDir:        filepath.Join(n.cfg.DataDir, "internal", n.id[:12]),
		Host:            n.cfg.InternalNodeHost,
		Port:            n.cfg.InternalNodePort,
		LeafURL:         n.o.LeafURL,
		LeafCredentials: n.cfg.WorkloadLeafCreds,
		Domain:          "nexnode" + strings.ToLower(n.id[1:9]),
		Log:             n.log,
	})
	if err != nil {
		return err
	}
	n.internal = in
	n.log.Info("Internal NATS server started", "client_url", in.ClientURL())
	if n.inc, err = in.ConnectNode("nex-node-"+n.id[:8],
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			n.log.Warn("internal NATS", "subject", subject, "error", err)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				n.log.Warn("internal NATS: disconnected", "error", err)
			}
		})); err != nil {
		n.shutdownInternal()
		return fmt.Errorf("connect to internal NATS: %w", err)
	}
	if err := n.subscribeAgents(); err != nil {
		n.shutdownInternal()
		return err
	}

	n.pub = events.NewPublisher(n.o.Control, n.id, n.log)
	n.log.Info("Use this key as the recipient for encrypted run requests", "public_xkey", n.o.Identity.PublicXKey())

	n.pool = pool.New(n.newSandbox, pool.Options{
		Target:   n.cfg.PoolSize(),
		Parallel: max(2, runtime.NumCPU()),
		// A deployed workload starts in the sandbox just taken; the refill's
		// new sandbox would compete with it for the CPU at that moment.
		RefillDelay: refillDelay(n.o.Driver),
		Log:         n.log,
	})
	n.api = controlapi.New(n.o.Control, n, n.log)
	if err := n.api.Start(); err != nil {
		n.shutdownInternal()
		return err
	}
	n.pub.Emit(api.SystemNamespace, api.EventNodeStarted, api.NodeStartedEvent{Version: n.o.Version, ID: n.id, Tags: n.tags()})
	n.log.Info("NATS execution engine awaiting commands", "id", n.id, "version", n.o.Version)
	n.pool.Start()

	n.bg.Add(3)
	go n.heartbeats()
	go n.pingAgents()
	go n.restageLoop()
	return nil
}

// Done is closed when the node has stopped.
func (n *Node) Done() <-chan struct{} { return n.done }

// Stop shuts the node down gracefully: no new requests, workloads stopped,
// sandboxes stopped, node_stopped emitted.
func (n *Node) Stop(ctx context.Context) error {
	n.mu.Lock()
	if n.stopping {
		n.mu.Unlock()
		<-n.done
		return nil
	}
	n.stopping = true
	wls := make([]*workload, 0, len(n.workloads))
	for _, w := range n.workloads {
		wls = append(wls, w)
	}
	n.mu.Unlock()

	n.api.Stop()
	var wg sync.WaitGroup
	for _, w := range wls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.undeploy(ctx, w, "node shutting down")
		}()
	}
	wg.Wait()
	for _, h := range n.pool.Close() {
		h.Discard()
	}
	n.mu.Lock()
	left := make([]*sandboxHandle, 0, len(n.sandboxes))
	for _, h := range n.sandboxes {
		left = append(left, h)
	}
	n.mu.Unlock()
	for _, h := range left {
		h.Discard()
	}
	n.cancel()
	n.bg.Wait()
	n.pub.Emit(api.SystemNamespace, api.EventNodeStopped, api.NodeStoppedEvent{ID: n.id, Graceful: true})
	_ = n.pub.Flush()
	n.shutdownInternal()
	close(n.done)
	n.log.Info("node stopped", "id", n.id)
	return nil
}

func (n *Node) shutdownInternal() {
	if n.inc != nil {
		n.inc.Close()
	}
	if n.internal != nil {
		n.internal.Shutdown()
	}
}

func (n *Node) heartbeats() {
	defer n.bg.Done()
	t := time.NewTicker(n.cfg.HeartbeatInterval.D())
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
			p := n.Ping()
			n.pub.Emit(api.SystemNamespace, api.EventHeartbeat, api.HeartbeatEvent{Version: p.Version, NodeID: p.NodeID,
				Nexus: p.Nexus, Uptime: p.Uptime, Tags: p.Tags, RunningMachines: p.RunningMachines})
		}
	}
}

func (n *Node) tags() map[string]string {
	t := map[string]string{
		api.TagOS:       runtime.GOOS,
		api.TagArch:     runtime.GOARCH,
		api.TagCPUCount: strconv.Itoa(runtime.NumCPU()),
	}
	for k, v := range n.cfg.Tags {
		t[k] = v
	}
	if sandbox.IsUnsafe(n.o.Driver) {
		t[api.TagUnsafe] = "true"
	}
	n.mu.Lock()
	if n.lameDuck {
		t[api.TagLameDuck] = "true"
	}
	n.mu.Unlock()
	return t
}

func uptime(since time.Time) string {
	return time.Since(since).Truncate(time.Second).String()
}

func (n *Node) running() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.workloads)
}

// Ping implements controlapi.Node.
func (n *Node) Ping() api.PingResponse {
	return api.PingResponse{NodeID: n.id, Nexus: n.cfg.Nexus, Version: n.o.Version, Uptime: uptime(n.started),
		TargetXkey: n.o.Identity.PublicXKey(), Tags: n.tags(), RunningMachines: n.running()}
}

// Bid implements controlapi.Node: a node bids only when it satisfies every
// criterion given and is not in lame-duck mode.
func (n *Node) Bid(req api.AuctionRequest) (api.PingResponse, bool) {
	n.mu.Lock()
	ld := n.lameDuck
	n.mu.Unlock()
	if ld {
		return api.PingResponse{}, false
	}
	if req.OS != nil && *req.OS != runtime.GOOS {
		return api.PingResponse{}, false
	}
	if req.Arch != nil && *req.Arch != runtime.GOARCH {
		return api.PingResponse{}, false
	}
	if req.Sandboxed != nil && *req.Sandboxed == sandbox.IsUnsafe(n.o.Driver) {
		return api.PingResponse{}, false
	}
	tags := n.tags()
	for k, v := range req.Tags {
		if tags[k] != v {
			return api.PingResponse{}, false
		}
	}
	for _, t := range req.WorkloadTypes {
		if !n.typeAllowed(t) {
			return api.PingResponse{}, false
		}
	}
	return n.Ping(), true
}

func (n *Node) typeAllowed(t string) bool {
	for _, a := range n.cfg.WorkloadTypes {
		if a == t {
			return true
		}
	}
	return false
}

// WorkloadPing implements controlapi.Node.
func (n *Node) WorkloadPing(ns, idOrName string) (api.WorkloadPingResponse, bool) {
	var ms []api.WorkloadPingMachine
	n.mu.Lock()
	for _, w := range n.workloads {
		if w.ns != ns || (idOrName != "" && w.id != idOrName && w.name != idOrName) {
			continue
		}
		ms = append(ms, api.WorkloadPingMachine{ID: w.id, Namespace: w.ns, Name: w.name, Type: w.typ})
	}
	n.mu.Unlock()
	if len(ms) == 0 {
		return api.WorkloadPingResponse{}, false
	}
	p := n.Ping()
	return api.WorkloadPingResponse{NodeID: n.id, TargetXkey: p.TargetXkey, Version: p.Version, Tags: p.Tags,
		Uptime: p.Uptime, RunningMachines: ms}, true
}

// Info implements controlapi.Node.
func (n *Node) Info(ns string) api.InfoResponse {
	resp := api.InfoResponse{Version: n.o.Version, Uptime: uptime(n.started), PublicXKey: n.o.Identity.PublicXKey(),
		Tags: n.tags(), Memory: readMeminfo(), Machines: []api.MachineSummary{},
		SupportedWorkloadTypes: n.cfg.WorkloadTypes}
	n.mu.Lock()
	for _, w := range n.workloads {
		if w.ns != ns {
			continue
		}
		w.mu.Lock()
		m := api.MachineSummary{ID: w.id, Healthy: w.running, Uptime: uptime(w.deployedAt),
			Namespace: w.ns, Workload: api.WorkloadDescription{Name: w.name, Description: w.description,
				Runtime: n.o.Driver.Name(), Type: w.typ, Hash: w.hash}, Retries: w.retries}
		if w.sandbox != nil {
			m.SandboxID = w.sandbox.id
		}
		w.mu.Unlock()
		resp.Machines = append(resp.Machines, m)
	}
	n.mu.Unlock()
	st := n.pool.Status()
	// A pooled VM that takes a file ahead (restage) is ready all the same.
	resp.Pool = &api.PoolStatus{Driver: n.o.Driver.Name(), Target: st.Target, Ready: st.Ready + st.Lent, Starting: st.Starting,
		Failures: st.ConsecutiveFailures, LastErr: st.LastError}
	if d, ok := n.o.Driver.(sandbox.Describer); ok {
		resp.Pool.Boot = d.Describe()
	}
	if last, _ := n.lastArtifact(); last != "" {
		resp.Pool.StagedAhead = n.pool.Count(func(h *sandboxHandle) bool { return h.ahead().hash == last })
	}
	return resp
}

// EnterLameDuck implements controlapi.Node: the node refuses new workloads
// and stops bidding; running ones keep running.
func (n *Node) EnterLameDuck(ctx context.Context) error {
	n.mu.Lock()
	already := n.lameDuck
	n.lameDuck = true
	n.mu.Unlock()
	if !already {
		n.log.Info("entered lame-duck mode")
		n.pub.Emit(api.SystemNamespace, api.EventLameDuckEntered, api.LameDuckEnteredEvent{Version: n.o.Version, ID: n.id})
	}
	return nil
}

func readMeminfo() *api.MemoryStat {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return nil
	}
	var m api.MemoryStat
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.Atoi(f[1])
		switch f[0] {
		case "MemTotal:":
			m.MemTotal = v
		case "MemFree:":
			m.MemFree = v
		case "MemAvailable:":
			m.MemAvailable = v
		}
	}
	return &m
}
