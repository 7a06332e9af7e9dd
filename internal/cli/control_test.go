package cli

import (
	"context"
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/nex-engine/nex/api"
)

func TestNodeLsTableAndJSON(t *testing.T) {
	p := startPlane(t)
	a := p.startNode(withTags(map[string]string{TagNodeName: "alpha"}))
	b := p.startNode()

	out, _ := p.mustRun("node", "ls")
	for _, want := range []string{"NATS Execution Nodes", "ID", "Name", "Version", "Uptime", "Workloads",
		a.ID(), b.ID(), "alpha", testVersion, "╭"} {
		if !strings.Contains(out, want) {
			t.Errorf("node ls output lacks %q:\n%s", want, out)
		}
	}
	first, second := min(a.ID(), b.ID()), max(a.ID(), b.ID())
	if strings.Index(out, first) > strings.Index(out, second) {
		t.Errorf("nodes not sorted by id:\n%s", out)
	}

	out, _ = p.mustRun("node", "ls", "--json")
	var nodes []api.PingResponse
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("--json output is not a JSON array: %v\n%s", err, out)
	}
	if len(nodes) != 2 || nodes[0].NodeID != first || nodes[1].NodeID != second {
		t.Fatalf("--json nodes = %+v, want %s and %s", nodes, first, second)
	}
	for _, n := range nodes {
		if n.Version != testVersion || !strings.HasPrefix(n.TargetXkey, "X") || n.Uptime == "" || n.RunningMachines != 0 {
			t.Errorf("--json node %+v", n)
		}
		if got := n.Tags[TagNodeName]; (n.NodeID == a.ID()) != (got == "alpha") {
			t.Errorf("node %s has name %q", n.NodeID, got)
		}
	}
}

func TestNodeLsWithoutNodesSaysWhereItLooked(t *testing.T) {
	url := ccServer(t)
	code, _, errOut := ccRun(t, context.Background(), "node", "ls", "-s", url)
	if code == 0 || !strings.Contains(errOut, "no nex nodes answered on "+url) || !strings.Contains(errOut, "nex node up") {
		t.Fatalf("exit %d, stderr %q; want a failure naming %s", code, errOut, url)
	}
}

func TestNodeInfoAndLameduckByPrefixAndName(t *testing.T) {
	devHome(t)
	p := startPlane(t)
	n := p.startNode(withTags(map[string]string{TagNodeName: "alpha", "rack": "r1"}))

	out, _ := p.mustRun("node", "info", n.ID()[:12])
	for _, want := range []string{n.ID(), testVersion, "process driver: 1/1 ready, 0 starting", " total, ", " available",
		"nex.os=" + runtime.GOOS, "nex.unsafe=true", "nex.nodename=alpha", "rack=r1", "Workload types", "native",
		"No workloads in namespace default."} {
		if !strings.Contains(out, want) {
			t.Errorf("node info lacks %q:\n%s", want, out)
		}
	}
	info := nodeInfo(t, p, "alpha")
	if info.Pool == nil || info.Pool.Driver != "process" || info.Pool.Target != 1 || info.Pool.Ready != 1 ||
		info.Version != testVersion || !strings.HasPrefix(info.PublicXKey, "X") || info.Memory == nil ||
		info.Memory.MemTotal == 0 || !slices.Equal(info.SupportedWorkloadTypes, []string{api.WorkloadNative}) {
		t.Fatalf("node info --json = %+v", info)
	}
	code, _, errOut := p.run("node", "info", "NOPE")
	if code == 0 || !strings.Contains(errOut, `no node with id, id prefix or name "NOPE"`) {
		t.Fatalf("unknown node: exit %d, %s", code, errOut)
	}

	out, _ = p.mustRun("node", "lameduck", "alpha", "--json")
	var ld api.LameDuckResponse
	if err := json.Unmarshal([]byte(out), &ld); err != nil || !ld.Success || ld.NodeID != n.ID() {
		t.Fatalf("lameduck --json: %q (%v)", out, err)
	}
	out, _ = p.mustRun("node", "lameduck", n.ID()[:8])
	if !strings.Contains(out, "node "+n.ID()+" is in lame-duck mode") {
		t.Fatalf("lameduck: %q", out)
	}
	// The node says so, stops bidding and refuses deploys.
	if info := nodeInfo(t, p, "alpha"); info.Tags[api.TagLameDuck] != "true" {
		t.Errorf("tags after lameduck: %v", info.Tags)
	}
	bin := workloadFile(t, "job")
	code, _, errOut = p.run("devrun", bin)
	if code == 0 || !strings.Contains(errOut, "no node bid for a native workload") {
		t.Errorf("devrun by auction to a lame duck: exit %d, %s", code, errOut)
	}
	code, _, errOut = p.run("devrun", bin, "--node", "alpha")
	if code == 0 || !strings.Contains(errOut, "lame-duck mode") {
		t.Errorf("devrun --node to a lame duck: exit %d, %s", code, errOut)
	}
}

// nodeInfo runs node info --json.
func nodeInfo(t *testing.T, p *plane, node string) api.InfoResponse {
	t.Helper()
	out, _ := p.mustRun("node", "info", node, "--json")
	var info api.InfoResponse
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("node info --json: %v\n%s", err, out)
	}
	return info
}
