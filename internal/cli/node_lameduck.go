package cli

import (
	"context"
	"fmt"
)

// NodeLameduckCmd puts a node in lame-duck mode: it takes no new workloads
// (it stops bidding in auctions and refuses deploys).
type NodeLameduckCmd struct {
	ID   string `arg:"" name:"id" help:"node id (N…), a unique prefix of it, or the node's name"`
	JSON bool   `name:"json" help:"print the node's reply as JSON"`
}

func (c *NodeLameduckCmd) Run(g *Globals, ctx context.Context) error {
	cl, node, closeConn, err := g.nodeClient(ctx, "node lameduck", c.ID)
	if err != nil {
		return err
	}
	defer closeConn()
	res, err := cl.LameDuck(ctx, node)
	if err != nil {
		return err
	}
	if c.JSON {
		if err := writeJSON(g.Stdout(), res); err != nil {
			return err
		}
	}
	if !res.Success {
		return fmt.Errorf("node %s did not enter lame-duck mode", node)
	}
	if c.JSON {
		return nil
	}
	_, err = fmt.Fprintf(g.Stdout(), "node %s is in lame-duck mode\n", node)
	return err
}
