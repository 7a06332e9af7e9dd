package agent_test

import (
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestLogFlowWaitsForTheNode: with a node that answers log syncs, an agent
// whose workload prints faster than the node confirms sends two windows
// of lines (1024 each) and then waits, its workload blocked on the pipe;
// once the node answers, every line follows, then the exit.
func TestLogFlowWaitsForTheNode(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddMuteAgent("flow1")
	ctx := testCtx(t)
	answer := func(m *nats.Msg) {
		body, _ := json.Marshal(agentapi.HandshakeReply{OK: true, Now: time.Now(), LogSync: true})
		_ = m.Respond(body)
	}
	var mu sync.Mutex
	var held []*nats.Msg
	answering := false
	for _, s := range []struct {
		subject string
		h       nats.MsgHandler
	}{
		{agentapi.HandshakeSubject(a.ID), answer},
		{agentapi.SyncSubject(a.ID), func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			if answering {
				_ = m.Respond(nil)
				return
			}
			held = append(held, m)
		}},
	} {
		sub, err := h.Node.Subscribe(s.subject, s.h)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
	}
	if err := h.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	runAgent(t, ctx, a, agent.Options{})
	if _, err := a.WaitHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	const lines = 10_000
	if r := shell(t, a, "wl1", "i=0; while [ $i -lt 10000 ]; do echo line $i; i=$((i+1)); done; echo done"); !r.OK {
		t.Fatalf("deploy: %+v", r)
	}
	count := func() int {
		n := 0
		for _, l := range a.Logs() {
			if l.Stream == "stdout" {
				n++
			}
		}
		return n
	}
	if err := poll(ctx, func() bool { return count() >= 2048 }); err != nil {
		t.Fatalf("%d lines; want the first two windows", count())
	}
	// Nothing more comes while the node holds its answers. (Were the
	// agent not waiting, the other 7,953 lines would take milliseconds.)
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	n, syncs := count(), len(held)
	mu.Unlock()
	if n != 2048 || syncs != 2 {
		t.Fatalf("with no answer from the node: %d lines and %d syncs; want 2048 and 2", n, syncs)
	}
	mu.Lock()
	answering = true
	for _, m := range held {
		_ = m.Respond(nil)
	}
	mu.Unlock()
	e, err := a.WaitEvent(ctx, agentapi.EventWorkloadExited)
	if err != nil {
		t.Fatal(err)
	}
	if e.Code != 0 {
		t.Fatalf("exit = %+v", e)
	}
	if err := poll(ctx, func() bool { return count() == lines+1 }); err != nil {
		t.Fatalf("%d lines; want %d", count(), lines+1)
	}
}
