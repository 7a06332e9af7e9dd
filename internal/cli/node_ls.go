package cli

import (
	"context"

	"github.com/jedib0t/go-pretty/v6/table"
)

// NodeLsCmd lists the nodes answering $NEX.PING.
type NodeLsCmd struct {
	JSON bool `name:"json" help:"print the nodes' ping replies as a JSON array"`
}

func (c *NodeLsCmd) Run(g *Globals, ctx context.Context) error {
	cl, closeConn, err := g.controlClient("node ls")
	if err != nil {
		return err
	}
	defer closeConn()
	nodes, err := cl.Ping(ctx) // sorted by id
	if err != nil {
		return err
	}
	if c.JSON {
		return writeJSON(g.Stdout(), nodes)
	}
	t := newTable("NATS Execution Nodes", "ID", "Name", "Version", "Uptime", "Workloads")
	for _, n := range nodes {
		t.AppendRow(table.Row{n.NodeID, n.Tags[TagNodeName], n.Version, n.Uptime, n.RunningMachines})
	}
	return renderTable(g.Stdout(), t)
}
