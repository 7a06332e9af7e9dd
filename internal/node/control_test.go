package node

import (
	"encoding/json"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/node/config"
)

func TestPingInfoAuctionLameDuck(t *testing.T) {
	h := newHarness(t, func(c *config.Config) { c.Tags = map[string]string{"region": "eu"} })
	id := h.node.ID()

	// $NEX.PING: every node answers.
	pongs, err := h.client.Ping(h.ctx())
	if err != nil || len(pongs) != 1 {
		t.Fatalf("ping: %v %v", pongs, err)
	}
	p := pongs[0]
	if p.NodeID != id || p.Version != "test" || p.TargetXkey != h.node.o.Identity.PublicXKey() || p.Uptime == "" {
		t.Fatalf("ping response %+v", p)
	}
	for k, want := range map[string]string{api.TagOS: runtime.GOOS, api.TagArch: runtime.GOARCH,
		api.TagCPUCount: strconv.Itoa(runtime.NumCPU()), api.TagUnsafe: "true", "region": "eu"} {
		if p.Tags[k] != want {
			t.Errorf("tag %s = %q, want %q", k, p.Tags[k], want)
		}
	}
	// $NEX.PING.<node>
	if one, err := h.client.PingNode(h.ctx(), id); err != nil || one.NodeID != id {
		t.Fatalf("ping node: %v %v", one, err)
	}
	// $NEX.INFO.<ns>.<node>
	info, err := h.client.Info(h.ctx(), "default", id)
	if err != nil {
		t.Fatal(err)
	}
	if info.PublicXKey != p.TargetXkey || info.Memory == nil || info.Memory.MemTotal == 0 ||
		len(info.SupportedWorkloadTypes) != 1 || info.Pool == nil || info.Pool.Driver != "process" {
		t.Fatalf("info %+v", info)
	}
	eventually(t, 20*time.Second, "the warm pool to fill", func() bool {
		info, err := h.client.Info(h.ctx(), "default", id)
		return err == nil && info.Pool.Ready == 1
	})

	// $NEX.AUCTION: only matching nodes bid.
	yes, no := true, false
	linux, plan9 := runtime.GOOS, "plan9"
	cases := []struct {
		name string
		req  api.AuctionRequest
		bids bool
	}{
		{"empty", api.AuctionRequest{}, true},
		{"os", api.AuctionRequest{OS: &linux}, true},
		{"wrong os", api.AuctionRequest{OS: &plan9}, false},
		{"tags", api.AuctionRequest{Tags: map[string]string{"region": "eu"}}, true},
		{"wrong tag", api.AuctionRequest{Tags: map[string]string{"region": "us"}}, false},
		{"types", api.AuctionRequest{WorkloadTypes: []string{"native"}}, true},
		{"disallowed type", api.AuctionRequest{WorkloadTypes: []string{"wasm"}}, false},
		{"unsandboxed ok", api.AuctionRequest{Sandboxed: &no}, true},
		{"needs sandbox", api.AuctionRequest{Sandboxed: &yes}, false},
	}
	for _, tc := range cases {
		bids, err := h.client.Auction(h.ctx(), tc.req)
		if tc.bids && (err != nil || len(bids) != 1 || bids[0].NodeID != id) {
			t.Errorf("%s: want a bid, got %v %v", tc.name, bids, err)
		}
		if !tc.bids && len(bids) != 0 {
			t.Errorf("%s: want no bid, got %v", tc.name, bids)
		}
	}

	// Events: lame duck is announced and changes tags; deploys are refused.
	evs := make(chan api.CloudEvent, 10)
	sub, _ := h.nc.Subscribe(api.EventSubject(api.SystemNamespace, api.EventLameDuckEntered), func(m *natsMsg) {
		var ev api.CloudEvent
		_ = json.Unmarshal(m.Data, &ev)
		evs <- ev
	})
	defer sub.Unsubscribe()
	_ = h.nc.Flush()
	ld, err := h.client.LameDuck(h.ctx(), id)
	if err != nil || !ld.Success || ld.NodeID != id {
		t.Fatalf("lameduck: %v %v", ld, err)
	}
	select {
	case ev := <-evs:
		if ev.SpecVersion != "1.0" || ev.Source != id || ev.Type != api.EventLameDuckEntered || ev.Namespace != "system" {
			t.Fatalf("event %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no node_entered_lameduck event")
	}
	if one, _ := h.client.PingNode(h.ctx(), id); one.Tags[api.TagLameDuck] != "true" {
		t.Fatalf("lame-duck tag missing: %v", one.Tags)
	}
	if bids, _ := h.client.Auction(h.ctx(), api.AuctionRequest{}); len(bids) != 0 {
		t.Fatal("a lame-duck node bid")
	}
}

func TestHeartbeatAndStartStopEvents(t *testing.T) {
	cpHarness := newHarness(t, func(c *config.Config) { c.HeartbeatInterval = config.Duration(100 * time.Millisecond) })
	got := make(chan api.CloudEvent, 100)
	sub, err := cpHarness.nc.Subscribe("$NEX.events.system.*", func(m *natsMsg) {
		var ev api.CloudEvent
		if json.Unmarshal(m.Data, &ev) == nil {
			got <- ev
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	var hb api.HeartbeatEvent
	deadline := time.After(10 * time.Second)
	for hb.NodeID == "" {
		select {
		case ev := <-got:
			if ev.Type == api.EventHeartbeat {
				_ = json.Unmarshal(ev.Data, &hb)
			}
		case <-deadline:
			t.Fatal("no heartbeat")
		}
	}
	if hb.NodeID != cpHarness.node.ID() || hb.Version != "test" || hb.Tags[api.TagOS] == "" {
		t.Fatalf("heartbeat %+v", hb)
	}
	// A graceful stop says so.
	if err := cpHarness.node.Stop(cpHarness.ctx()); err != nil {
		t.Fatal(err)
	}
	deadline = time.After(10 * time.Second)
	for {
		select {
		case ev := <-got:
			if ev.Type != api.EventNodeStopped {
				continue
			}
			var st api.NodeStoppedEvent
			_ = json.Unmarshal(ev.Data, &st)
			if !st.Graceful || st.ID != cpHarness.node.ID() {
				t.Fatalf("node_stopped %+v", st)
			}
			if len(cpHarness.sandboxDirs()) != 0 {
				t.Fatalf("sandboxes left after stop: %v", cpHarness.sandboxDirs())
			}
			return
		case <-deadline:
			t.Fatal("no node_stopped event")
		}
	}
}
