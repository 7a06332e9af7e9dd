// Package agent is what runs inside every sandbox: it connects to the node's
// internal NATS with its own credentials, handshakes, fetches and runs the
// workload it is given, streams its output and lifecycle back, and answers
// pings. The same code runs as a child process (process sandbox) and as PID 1
// of a microVM (see package agent/vminit).
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/workload"
	"github.com/nex-engine/nex/internal/workload/native"
)

// Options configure Run.
type Options struct {
	Meta agentapi.Metadata
	Log  *slog.Logger
	// WorkDir holds the fetched artifact and the workload's files.
	// Empty: the current directory.
	WorkDir string
	// StagedDir is where the node stages files for this sandbox
	// (agentapi.StagedDir in a VM); a deploy's Unstage deletes files there
	// and nowhere else. Empty: Unstage is ignored.
	StagedDir string
	// WorkloadNATSAddr is the host:port workloads are told to use for NATS
	// (NATS_URL). Empty: the host:port of Meta.NATSURL.
	WorkloadNATSAddr string
	// PID1 is set when the agent is a VM's init.
	PID1 bool
	// Dialer, when set, makes the agent's connections to the node (a
	// Firecracker VM's vsock); Meta.NATSURL then only names the server.
	Dialer nats.CustomDialer
	// Runtimes by workload type. Nil: DefaultRuntimes().
	Runtimes map[string]workload.Runtime
	// Handshaken, if set, is called once the node has accepted the
	// handshake: work that need not delay it (a VM's boot line) waits for it.
	Handshaken func()
	// Rehearsal, if set, is a command (argv[0] a path) of the sandbox's
	// own that exits 0 by itself at once, after a line on each of its
	// output streams (a workload's first output). The agent runs it once
	// after its handshake, before any deploy, to rehearse a deploy
	// (rehearse.go).
	Rehearsal []string
	// RehearseMore, if set, runs after Rehearsal's command: more of a
	// deploy's way that is the sandbox's own (in a VM, PID 1's forwarder
	// of the workloads' NATS connections and its read of the stage disk).
	// It must end soon after ctx does.
	RehearseMore func(ctx context.Context) error
	// Quiesce, if set, is called when a deploy or a stop comes, after the
	// rehearsal has ended: it ends what else ran while the sandbox waited
	// (a VM's trial start, internal/trial) and returns once that has.
	Quiesce func()
	// Deploying, if set, is called when a deploy comes, once its request
	// has passed the first checks, before its workload starts: what the
	// sandbox does then overlaps the workload's start (in a VM, PID 1's
	// forwarder dials the node's NATS for the workload's first connection).
	Deploying func()
	// CheckRoom, if set, refuses an artifact of size bytes that would not
	// fit in WorkDir, before it is fetched: in a VM, WorkDir is in guest
	// RAM, and filling it would end in "no space left on device" after the
	// whole transfer, or in the OOM killer.
	CheckRoom func(size int64) error
}

// DefaultRuntimes are the workload types an agent runs unless told otherwise.
func DefaultRuntimes() map[string]workload.Runtime {
	return map[string]workload.Runtime{"native": native.Runtime{}}
}

// Timing of the agent. The stop grace is shorter than what drivers wait for
// the agent itself, so a workload that ignores SIGTERM is killed and
// reported by the agent rather than by the driver's SIGKILL.
const (
	stopGrace        = 5 * time.Second
	handshakeTimeout = 2 * time.Second  // one handshake attempt
	chunkTimeout     = 30 * time.Second // one artifact chunk; VMs under emulation are slow
	retryMin         = 50 * time.Millisecond
	retryMax         = 2 * time.Second
	reconnectWait    = 500 * time.Millisecond
	// maxReconnects bounds how long an agent outlives its node (≈ one minute):
	// a node that restarts reaps its old sandboxes anyway.
	maxReconnects = 120
	flushTimeout  = 5 * time.Second
)

// errStopping refuses work once an undeploy (or the end of Run) has begun.
var errStopping = errors.New("sandbox is stopping")

// Log keys.
const (
	keyWorkload = "workload"
	keyError    = "error"
)

// Run runs the agent until its workload is undeployed or ends by itself, its
// connection to the node is lost for good, or ctx ends. Only the lost
// connection (or bad options) is an error.
func Run(ctx context.Context, o Options) error {
	if err := o.Meta.Validate(); err != nil {
		return err
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.WorkDir == "" {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("agent: work dir: %w", err)
		}
		o.WorkDir = wd
	}
	if o.Runtimes == nil {
		o.Runtimes = DefaultRuntimes()
	}
	a := newAgent(ctx, o)
	nc, err := a.connect(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.nc = nc
	defer a.close()

	if err := a.subscribe(); err != nil {
		return err
	}
	if err := a.handshake(ctx); err != nil {
		select {
		case <-a.closed:
			err = fmt.Errorf("agent: connection to node closed: %w", connErr(nc))
		case <-a.finished: // undeployed before the handshake was answered
			err = nil
		default:
			if ctx.Err() != nil {
				err = nil
			}
		}
		a.stop() // nothing should run yet; make sure nothing does
		if err == nil {
			a.drain()
		}
		return err
	}

	if a.o.Handshaken != nil {
		a.o.Handshaken()
	}
	if len(a.o.Rehearsal) > 0 {
		a.startRehearsal()
	}
	select {
	case <-a.finished:
	case <-ctx.Done():
		a.log.Info("stopping: context ended")
		a.stop()
		<-a.finished
	case <-a.closed:
		a.stop()
		return fmt.Errorf("agent: connection to node closed: %w", connErr(nc))
	}
	a.drain()
	return nil
}

// newAgent makes the agent of o (defaults already applied), which runs
// until ctx ends.
func newAgent(ctx context.Context, o Options) *agent {
	return &agent{
		o:        o,
		id:       o.Meta.SandboxID,
		log:      o.Log,
		started:  time.Now(),
		runCtx:   ctx,
		finished: make(chan struct{}),
		closed:   make(chan struct{}),
	}
}

type agent struct {
	o       Options
	id      string
	log     *slog.Logger
	nc      *nats.Conn
	started time.Time
	runCtx  context.Context

	mu           sync.Mutex
	busy         bool // a deploy is under way or its workload runs
	stopping     bool
	cancelDeploy context.CancelFunc
	wl           *running
	// undeployReplied, while an undeploy is answered, is closed once the
	// reply is out, so the exit event follows the reply.
	undeployReplied chan struct{}
	rehearsal       *rehearsal // nil: none was started
	rehearsalOver   bool       // a deploy or stop has ended it (or came first)

	finished   chan struct{} // Run may end: the workload's end is reported
	finishOnce sync.Once
	closed     chan struct{} // the connection is closed for good
	closing    bool          // the agent closes it: not a loss

	logs logFlow // publishLog's
}

// running is the sandbox's one workload.
type running struct {
	id             string
	name           string
	h              workload.Handle
	stdout, stderr *lineWriter
	exited         chan struct{}
}

func (a *agent) finish() { a.finishOnce.Do(func() { close(a.finished) }) }

func (a *agent) subscribe() error {
	subs := []struct {
		subject string
		handle  nats.MsgHandler
	}{
		{agentapi.DeploySubject(a.id), a.handleDeploy},
		{agentapi.UndeploySubject(a.id), a.handleUndeploy},
		{agentapi.PingSubject(a.id), a.handlePing},
		{agentapi.TriggerSubject(a.id), a.handleTrigger},
	}
	for _, s := range subs {
		if _, err := a.nc.Subscribe(s.subject, s.handle); err != nil {
			return fmt.Errorf("agent: subscribe %s: %w", s.subject, err)
		}
	}
	// No flush (a round trip, ≈ 20 ms in a VM under TCG): the handshake
	// request goes out on this connection after these subscriptions, the
	// server applies a client's operations in order, and the node deploys
	// only after it has answered the handshake.
	return nil
}

// handshake repeats its request until the node answers: the node may not
// have subscribed yet when a fast sandbox comes up.
func (a *agent) handshake(ctx context.Context) error {
	hs := agentapi.Handshake{
		SandboxID:    a.id,
		AgentVersion: agentapi.Version,
		Message:      "agent ready",
		StartedAt:    a.started,
		PID1:         a.o.PID1,
	}
	body, err := json.Marshal(hs)
	if err != nil {
		return fmt.Errorf("agent: handshake: %w", err)
	}
	subject := agentapi.HandshakeSubject(a.id)
	// Stop asking once the connection is gone for good, or an undeploy
	// came first.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-a.closed:
		case <-a.finished:
		case <-ctx.Done():
		}
		cancel()
	}()
	for wait := retryMin; ; wait = min(2*wait, retryMax) {
		rctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
		sent := time.Now()
		msg, err := a.nc.RequestWithContext(rctx, subject, body)
		recv := time.Now()
		cancel()
		if err == nil {
			var r agentapi.HandshakeReply
			if err := json.Unmarshal(msg.Data, &r); err != nil {
				return fmt.Errorf("agent: handshake reply: %w", err)
			}
			if !r.OK {
				return fmt.Errorf("agent: handshake refused: %s", r.Error)
			}
			if a.o.PID1 {
				a.resetClockAndEntropy(r, sent, recv)
			}
			a.logs.mu.Lock()
			a.logs.sync = r.LogSync
			a.logs.mu.Unlock()
			a.log.Info("handshake accepted", "took", time.Since(a.started).Round(time.Millisecond))
			return nil
		}
		a.log.Debug("handshake not answered yet", keyError, err)
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

func (a *agent) handlePing(m *nats.Msg) {
	a.mu.Lock()
	wl := a.wl
	a.mu.Unlock()
	running := false
	if wl != nil {
		select {
		case <-wl.exited:
		default:
			running = true
		}
	}
	a.respond(m, agentapi.Reply{OK: true, Running: running})
}

// handleTrigger answers function triggers. Native workloads are not
// functions; runtimes that run functions come with the JavaScript and Wasm
// workload types.
func (a *agent) handleTrigger(m *nats.Msg) {
	a.respond(m, agentapi.Reply{Error: "no function workload"})
}

func (a *agent) handleUndeploy(m *nats.Msg) {
	var u agentapi.Undeploy
	_ = json.Unmarshal(m.Data, &u) // an empty body is a plain undeploy
	a.log.Info("undeploy", "reason", u.Reason)
	replied := make(chan struct{})
	a.mu.Lock()
	a.undeployReplied = replied
	a.mu.Unlock()
	a.stop()
	a.respond(m, agentapi.Reply{OK: true})
	close(replied)
}

// stop ends the sandbox's work: a deploy under way is abandoned, a running
// workload gets SIGTERM and, after stopGrace, SIGKILL. It returns once the
// workload has ended; whoever owns the workload's end then calls finish.
func (a *agent) stop() {
	a.endRehearsal()
	a.mu.Lock()
	a.stopping = true
	wl, cancel, busy := a.wl, a.cancelDeploy, a.busy
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	switch {
	case wl != nil:
		ctx, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		if err := wl.h.Stop(ctx); err != nil {
			a.log.Warn("stop workload", keyWorkload, wl.name, keyError, err)
		}
		<-wl.exited
	case !busy:
		a.finish() // nothing deployed: the sandbox is done
	}
	// busy without a workload: the deploy sees stopping and finishes.
}

// watch reports the workload's end: output first, then the exit event.
func (a *agent) watch(wl *running) {
	ex, _ := wl.h.Wait(context.Background())
	wl.stdout.Flush()
	wl.stderr.Flush()
	close(wl.exited)
	a.log.Info("workload ended", keyWorkload, wl.name, "code", ex.Code, "message", ex.Message)
	a.mu.Lock()
	replied := a.undeployReplied
	a.mu.Unlock()
	if replied != nil {
		<-replied
	}
	a.publishEvent(agentapi.Event{Type: agentapi.EventWorkloadExited, WorkloadID: wl.id, Code: ex.Code,
		Message: ex.Message, OutOfMemory: ex.OutOfMemory})
	if err := a.nc.FlushTimeout(flushTimeout); err != nil {
		a.log.Warn("flush exit event", keyError, err)
	}
	a.finish()
}

func (a *agent) respond(m *nats.Msg, r agentapi.Reply) {
	body, _ := json.Marshal(r)
	if err := m.Respond(body); err != nil {
		a.log.Warn("reply", "subject", m.Subject, keyError, err)
	}
}

func (a *agent) publishEvent(e agentapi.Event) {
	body, _ := json.Marshal(e)
	if err := a.nc.Publish(agentapi.EventsSubject(a.id), body); err != nil {
		a.log.Warn("publish event", "type", e.Type, keyError, err)
	}
}

// drain lets handlers under way finish (an undeploy's reply among them),
// sends what is buffered, and closes the connection.
func (a *agent) drain() {
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	if err := a.nc.Drain(); err != nil {
		return
	}
	select {
	case <-a.closed:
	case <-time.After(2 * flushTimeout):
		a.log.Warn("drain did not finish; closing")
	}
}

func (a *agent) close() {
	a.mu.Lock()
	a.closing = true
	a.mu.Unlock()
	a.nc.Close()
}

func connErr(nc *nats.Conn) error {
	if err := nc.LastError(); err != nil {
		return err
	}
	return nats.ErrConnectionClosed
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
