package cli

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jedib0t/go-pretty/v6/table"

	"github.com/nex-engine/nex/api"
)

// NodeInfoCmd describes one node: identity, tags, memory, warm pool and the
// workloads it runs in the namespace.
type NodeInfoCmd struct {
	ID   string `arg:"" name:"id" help:"node id (N…), a unique prefix of it, or the node's name"`
	JSON bool   `name:"json" help:"print the node's info reply as JSON"`
}

func (c *NodeInfoCmd) Run(g *Globals, ctx context.Context) error {
	cl, node, closeConn, err := g.nodeClient(ctx, "node info", c.ID)
	if err != nil {
		return err
	}
	defer closeConn()
	info, err := cl.Info(ctx, g.Namespace, node)
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(g.Stdout(), info)
	}

	t := newTable("NATS Execution Node")
	t.AppendRows([]table.Row{
		{"ID", node},
		{"Name", info.Tags[TagNodeName]},
		{"Version", info.Version},
		{"Uptime", info.Uptime},
		{"Xkey", info.PublicXKey},
		{"Workload types", strings.Join(info.SupportedWorkloadTypes, ", ")},
	})
	if m := info.Memory; m != nil {
		t.AppendRow(table.Row{"Memory", fmt.Sprintf("%s total, %s free, %s available",
			kib(m.MemTotal), kib(m.MemFree), kib(m.MemAvailable))})
	}
	if p := info.Pool; p != nil {
		pool := fmt.Sprintf("%s driver: %d/%d ready, %d starting", p.Driver, p.Ready, p.Target, p.Starting)
		if p.StagedAhead > 0 {
			pool += fmt.Sprintf(", %d holding the artifact deployed last", p.StagedAhead)
		}
		if p.Failures > 0 {
			pool += fmt.Sprintf(", %d consecutive failures", p.Failures)
		}
		t.AppendRow(table.Row{"Warm pool", pool})
		if p.Boot != "" {
			t.AppendRow(table.Row{"Sandbox start", p.Boot})
		}
		if p.LastErr != "" {
			t.AppendRow(table.Row{"Last pool error", p.LastErr})
		}
	}
	for i, k := range slices.Sorted(maps.Keys(info.Tags)) {
		label := ""
		if i == 0 {
			label = "Tags"
		}
		t.AppendRow(table.Row{label, k + "=" + info.Tags[k]})
	}
	if err := renderTable(g.Stdout(), t); err != nil {
		return err
	}

	if len(info.Machines) == 0 {
		_, err := fmt.Fprintf(g.Stdout(), "No workloads in namespace %s.\n", g.Namespace)
		return err
	}
	w := newTable("Workloads in namespace "+g.Namespace, "ID", "Name", "Type", "Runtime", "Healthy", "Uptime", "Hash")
	ms := slices.Clone(info.Machines)
	slices.SortFunc(ms, func(a, b api.MachineSummary) int { return strings.Compare(a.ID, b.ID) })
	for _, m := range ms {
		hash := m.Workload.Hash
		if len(hash) > 12 {
			hash = hash[:12]
		}
		w.AppendRow(table.Row{m.ID, m.Workload.Name, m.Workload.Type, m.Workload.Runtime, m.Healthy, m.Uptime, hash})
	}
	return renderTable(g.Stdout(), w)
}
