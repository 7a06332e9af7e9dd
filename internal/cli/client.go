package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/controlclient"
)

// TagNodeName is the optional tag a node carries with its human name.
const TagNodeName = "nex.nodename"

// controlClient connects and returns a control-plane client and its closer.
func (g *Globals) controlClient(cmd string) (*controlclient.Client, func(), error) {
	nc, err := g.Connect("nex " + cmd)
	if err != nil {
		return nil, nil, err
	}
	return controlclient.New(nc, controlclient.WithTimeout(g.Timeout.D())), nc.Close, nil
}

// nodeClient connects for cmd and resolves ref (what resolveNode takes) to
// a node id: the opening of every command aimed at one node.
func (g *Globals) nodeClient(ctx context.Context, cmd, ref string) (*controlclient.Client, string, func(), error) {
	cl, closeConn, err := g.controlClient(cmd)
	if err != nil {
		return nil, "", nil, err
	}
	node, err := resolveNode(ctx, cl, ref)
	if err != nil {
		closeConn()
		return nil, "", nil, err
	}
	return cl, node, closeConn, nil
}

// resolveNode accepts a full node id, a unique prefix of one, or a node's
// nex.nodename tag, so users can type what `nex node ls` shows.
func resolveNode(ctx context.Context, cl *controlclient.Client, id string) (string, error) {
	if nkeys.IsValidPublicServerKey(id) {
		return id, nil
	}
	nodes, err := cl.Ping(ctx)
	if err != nil {
		return "", fmt.Errorf("find node %q: %w", id, err)
	}
	var matches []string
	for _, n := range nodes {
		if n.Tags[TagNodeName] == id || (id != "" && strings.HasPrefix(n.NodeID, id)) {
			matches = append(matches, n.NodeID)
		}
	}
	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return "", fmt.Errorf("no node with id, id prefix or name %q (`nex node ls` lists nodes)", id)
	default:
		return "", fmt.Errorf("%q matches %d nodes (%s): give more of the id", id, len(matches), strings.Join(matches, ", "))
	}
}
