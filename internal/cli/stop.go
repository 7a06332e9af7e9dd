package cli

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/devkeys"
)

// StopCmd stops a workload. The node only obeys a stop JWT signed by the
// issuer of the deploy JWT, for the same workload name.
type StopCmd struct {
	Node   string `arg:"" name:"node" help:"node id (N…), a unique prefix of it, or the node's name"`
	ID     string `arg:"" name:"id" help:"workload id"`
	Name   string `name:"name" help:"workload name (default: asked from the node)"`
	Issuer string `name:"issuer" type:"path" help:"account seed file that signed the deploy (default ~/.nex/issuer.nk)"`
	JSON   bool   `name:"json" help:"print the node's reply as JSON"`
}

func (c *StopCmd) Run(g *Globals, ctx context.Context) error {
	issuer, err := c.issuer()
	if err != nil {
		return err
	}
	cl, node, closeConn, err := g.nodeClient(ctx, "stop", c.Node)
	if err != nil {
		return err
	}
	defer closeConn()
	name, deployedAt := c.Name, time.Now()
	if name == "" {
		info, err := cl.Info(ctx, g.Namespace, node)
		if err != nil {
			return err
		}
		i := findMachine(info.Machines, c.ID)
		if i < 0 {
			return fmt.Errorf("no workload %s on node %s in namespace %s (`nex node info %s` lists them)",
				c.ID, node, g.Namespace, shortID(node))
		}
		m := info.Machines[i]
		name, deployedAt = m.Workload.Name, controlclient.DeployedAt(m.Uptime, time.Now())
	}
	tok, err := controlclient.StopJWT(ctx, issuer, name, deployedAt)
	if err != nil {
		return err
	}
	res, err := cl.Stop(ctx, g.Namespace, node, api.StopRequest{WorkloadID: c.ID, WorkloadJWT: tok, TargetNode: node})
	if err != nil {
		return err
	}
	if c.JSON {
		if err := writeJSON(g.Stdout(), res); err != nil {
			return err
		}
	}
	if !res.Stopped {
		return fmt.Errorf("node %s did not stop workload %s", node, c.ID)
	}
	if c.JSON {
		return nil
	}
	_, err = fmt.Fprintf(g.Stdout(), "workload %s (%s) stopped on node %s\n", c.ID, name, node)
	return err
}

func (c *StopCmd) issuer() (nkeys.KeyPair, error) {
	path := c.Issuer
	if path == "" {
		dir, err := devkeys.Dir("")
		if err != nil {
			return nil, err
		}
		path = filepath.Join(dir, devkeys.IssuerFile)
	}
	kp, err := devkeys.LoadIssuer(path)
	if errors.Is(err, devkeys.ErrNoKey) {
		// A fresh key would sign a stop the node must refuse: say so now.
		return nil, fmt.Errorf("no issuer key at %s: a workload is stopped with the key that deployed it (--issuer)", path)
	}
	return kp, err
}

func findMachine(ms []api.MachineSummary, id string) int {
	for i, m := range ms {
		if m.ID == id {
			return i
		}
	}
	return -1
}
