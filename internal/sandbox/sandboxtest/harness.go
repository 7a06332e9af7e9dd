package sandboxtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Harness plays the node's side of the agent protocol on a real internal
// NATS server: it answers handshakes, serves artifacts from memory and
// collects what agents publish.
type Harness struct {
	Server *natsd.Internal
	// Node is the node's own connection (all agent subjects).
	Node *nats.Conn
	t    testing.TB
}

// NewHarness starts an internal server for the life of t.
func NewHarness(t testing.TB) *Harness {
	t.Helper()
	in, err := natsd.StartInternal(natsd.InternalOptions{StoreDir: t.TempDir(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Shutdown)
	nc, err := in.ConnectNode("sandboxtest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return &Harness{Server: in, Node: nc, t: t}
}

// Agent is the node's view of one sandbox's agent.
type Agent struct {
	ID   string
	Meta agentapi.Metadata
	h    *Harness

	mu          sync.Mutex
	changed     chan struct{} // closed and replaced whenever something arrives
	handshakes  []agentapi.Handshake
	handshakeAt time.Time
	artifact    []byte
	logs        []agentapi.LogLine
	events      []agentapi.Event
	watched     sandbox.Sandbox // see Watch
}

// Watch ties a's WaitHandshake to sb: once sb has ended without a
// handshake, the wait fails with how it ended and the end of its console
// instead of running to its deadline (two minutes for a VM).
func (a *Agent) Watch(sb sandbox.Sandbox) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.watched = sb
}

// lateHandshake is how long a wait allows, after the watched sandbox ended,
// for a handshake it sent before it did.
const lateHandshake = time.Second

// AddAgent creates a sandbox's agent user and answers its handshakes.
func (h *Harness) AddAgent(id string) *Agent { return h.addAgent(id, true) }

// AddMuteAgent creates an agent user whose handshakes are recorded but never
// answered, like a node that has given up on the sandbox.
func (h *Harness) AddMuteAgent(id string) *Agent { return h.addAgent(id, false) }

func (h *Harness) addAgent(id string, answer bool) *Agent {
	h.t.Helper()
	seed, err := h.Server.AddAgent(id)
	if err != nil {
		h.t.Fatal(err)
	}
	a := &Agent{ID: id, h: h, Meta: agentapi.Metadata{SandboxID: id, NATSURL: h.Server.ClientURL(), Seed: seed},
		changed: make(chan struct{})}
	subs := []struct {
		subject string
		handle  nats.MsgHandler
	}{
		{agentapi.HandshakeSubject(id), func(m *nats.Msg) { a.onHandshake(m, answer) }},
		{agentapi.ArtifactSubject(id), a.onArtifact},
		{agentapi.LogsSubject(id), a.onLog},
		{agentapi.EventsSubject(id), a.onEvent},
	}
	for _, s := range subs {
		sub, err := h.Node.Subscribe(s.subject, s.handle)
		if err != nil {
			h.t.Fatal(err)
		}
		h.t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := h.Node.Flush(); err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { h.Server.RemoveAgent(id) })
	return a
}

// Spec is a sandbox spec for this agent in dir.
func (a *Agent) Spec(dir string) sandbox.Spec {
	return sandbox.Spec{ID: a.ID, Dir: dir, Agent: a.Meta, VCPU: 1, MemoryMiB: 128}
}

func (a *Agent) onHandshake(m *nats.Msg, answer bool) {
	at := time.Now()
	var hs agentapi.Handshake
	_ = json.Unmarshal(m.Data, &hs)
	a.mu.Lock()
	if len(a.handshakes) == 0 {
		a.handshakeAt = at
	}
	a.handshakes = append(a.handshakes, hs)
	a.notifyLocked()
	a.mu.Unlock()
	if !answer {
		return
	}
	entropy := make([]byte, 32)
	_, _ = rand.Read(entropy)
	body, _ := json.Marshal(agentapi.HandshakeReply{OK: true, Now: time.Now(), Entropy: entropy})
	_ = m.Respond(body)
}

func (a *Agent) onArtifact(m *nats.Msg) {
	var c agentapi.ArtifactChunk
	err := json.Unmarshal(m.Data, &c)
	a.mu.Lock()
	art := a.artifact
	a.mu.Unlock()
	reply := nats.NewMsg(m.Reply)
	switch {
	case err != nil:
		reply.Header.Set(agentapi.ErrorHeader, "bad chunk request: "+err.Error())
	case art == nil:
		reply.Header.Set(agentapi.ErrorHeader, "no artifact for this sandbox")
	case c.Offset < 0 || c.Offset > int64(len(art)) || c.Length <= 0:
		reply.Header.Set(agentapi.ErrorHeader, fmt.Sprintf("bad chunk %d+%d of %d bytes", c.Offset, c.Length, len(art)))
	default:
		end := min(c.Offset+int64(c.Length), int64(len(art)))
		reply.Data = art[c.Offset:end]
	}
	_ = m.RespondMsg(reply)
}

func (a *Agent) onLog(m *nats.Msg) {
	var l agentapi.LogLine
	if json.Unmarshal(m.Data, &l) == nil {
		a.mu.Lock()
		a.logs = append(a.logs, l)
		a.notifyLocked()
		a.mu.Unlock()
	}
}

func (a *Agent) onEvent(m *nats.Msg) {
	var e agentapi.Event
	if json.Unmarshal(m.Data, &e) == nil {
		a.mu.Lock()
		a.events = append(a.events, e)
		a.notifyLocked()
		a.mu.Unlock()
	}
}

func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// HandshakeAt is when the first handshake arrived (zero before).
func (a *Agent) HandshakeAt() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.handshakeAt
}

// Handshakes are the handshake requests received so far.
func (a *Agent) Handshakes() []agentapi.Handshake {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.handshakes)
}

// Logs are the log lines received so far.
func (a *Agent) Logs() []agentapi.LogLine {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.logs)
}

// Events are the events received so far.
func (a *Agent) Events() []agentapi.Event {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.events)
}

// WaitHandshake waits for the first handshake.
func (a *Agent) WaitHandshake(ctx context.Context) (agentapi.Handshake, error) {
	a.mu.Lock()
	sb := a.watched
	a.mu.Unlock()
	if sb != nil {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-sb.Done():
			case <-ctx.Done():
				return
			}
			select {
			case <-time.After(lateHandshake):
				cancel(sandboxEnded(sb))
			case <-ctx.Done():
			}
		}()
	}
	if err := a.waitFor(ctx, func() bool { return len(a.Handshakes()) > 0 }); err != nil {
		if cause := context.Cause(ctx); cause != nil {
			err = cause
		}
		return agentapi.Handshake{}, fmt.Errorf("no handshake from sandbox %s: %w", a.ID, err)
	}
	return a.Handshakes()[0], nil
}

// sandboxEnded says how sb ended, with the end of its console.
func sandboxEnded(sb sandbox.Sandbox) error {
	how := "it ended by itself"
	if err := sb.Err(); err != nil {
		how = err.Error()
	}
	if tail := sandbox.ConsoleTail(sb, 8); tail != "" {
		return fmt.Errorf("the sandbox ended (%s); its console ended with: %s", how, tail)
	}
	return fmt.Errorf("the sandbox ended (%s)", how)
}

// WaitEvent waits for an event of type typ.
func (a *Agent) WaitEvent(ctx context.Context, typ string) (agentapi.Event, error) {
	var found agentapi.Event
	err := a.waitFor(ctx, func() bool {
		for _, e := range a.Events() {
			if e.Type == typ {
				found = e
				return true
			}
		}
		return false
	})
	if err != nil {
		return found, fmt.Errorf("no %s event from sandbox %s (have %+v): %w", typ, a.ID, a.Events(), err)
	}
	return found, nil
}

// WaitLog waits for a log line on stream whose text is text.
func (a *Agent) WaitLog(ctx context.Context, stream, text string) error {
	err := a.waitFor(ctx, func() bool {
		return slices.ContainsFunc(a.Logs(), func(l agentapi.LogLine) bool { return l.Stream == stream && l.Text == text })
	})
	if err != nil {
		return fmt.Errorf("no %s line %q from sandbox %s (have %s): %w", stream, text, a.ID, a.logText(), err)
	}
	return nil
}

func (a *Agent) logText() string {
	var b strings.Builder
	for _, l := range a.Logs() {
		text := l.Text
		if len(text) > 80 {
			text = text[:80] + "…"
		}
		fmt.Fprintf(&b, "\n  %s: %s", l.Stream, text)
	}
	return b.String()
}

// Ping asks the agent whether it is alive.
func (a *Agent) Ping(ctx context.Context) (agentapi.Reply, error) {
	return a.request(ctx, agentapi.PingSubject(a.ID), nil)
}

// Deploy serves artifact and asks the agent to run it. Hash and Size are
// filled in from artifact when empty.
func (a *Agent) Deploy(ctx context.Context, d agentapi.Deploy, artifact []byte) (agentapi.Reply, error) {
	if d.Hash == "" {
		sum := sha256.Sum256(artifact)
		d.Hash = hex.EncodeToString(sum[:])
	}
	if d.Size == 0 {
		d.Size = int64(len(artifact))
	}
	a.mu.Lock()
	a.artifact = artifact
	a.mu.Unlock()
	return a.request(ctx, agentapi.DeploySubject(a.ID), d)
}

// Undeploy asks the agent to stop its workload and end.
func (a *Agent) Undeploy(ctx context.Context, reason string) (agentapi.Reply, error) {
	return a.request(ctx, agentapi.UndeploySubject(a.ID), agentapi.Undeploy{Reason: reason})
}

func (a *Agent) request(ctx context.Context, subject string, v any) (agentapi.Reply, error) {
	var body []byte
	if v != nil {
		var err error
		if body, err = json.Marshal(v); err != nil {
			return agentapi.Reply{}, err
		}
	}
	msg, err := a.h.Node.RequestWithContext(ctx, subject, body)
	if err != nil {
		return agentapi.Reply{}, fmt.Errorf("request %s: %w", subject, err)
	}
	var r agentapi.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return r, fmt.Errorf("reply on %s: %w", subject, err)
	}
	return r, nil
}

// waitFor re-checks cond whenever something arrives from the agent, until
// it holds or ctx ends.
func (a *Agent) waitFor(ctx context.Context, cond func() bool) error {
	for {
		a.mu.Lock()
		changed := a.changed
		a.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
