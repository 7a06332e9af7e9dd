package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/devkeys"
)

// DeployFlags are the workload flags devrun and run share.
type DeployFlags struct {
	Type        string   `name:"type" enum:"native,v8,js,wasm," default:"" help:"workload type (default: from the extension: .js v8, .wasm wasm, else native)"`
	Argv        []string `name:"argv" sep:"none" help:"an argument for the workload (repeat for more)"`
	Essential   bool     `name:"essential" help:"restart the workload when it exits"`
	Description string   `name:"description" help:"a description shown by node info"`
	Trigger     []string `name:"trigger" sep:"none" help:"subject that triggers a function workload (repeat for more)"`
	JSON        bool     `name:"json" help:"print the result as JSON"`
}

// DevrunCmd uploads a file to the object store and runs it on a node, signed
// and sealed with the developer's keys in ~/.nex (created on first use).
type DevrunCmd struct {
	File   string            `arg:"" type:"existingfile" help:"workload file: a static binary, a .js function or a .wasm module"`
	Env    []string          `arg:"" optional:"" name:"env" help:"environment as KEY=value (sealed so only the node reads it)"`
	Name   string            `name:"name" help:"workload name (default: the file name without extension)"`
	Node   string            `name:"node" help:"run on this node (id, id prefix or name) instead of holding an auction"`
	Tag    map[string]string `name:"tag" help:"auction only among nodes with this tag (k=v, repeat for more)"`
	Stop   bool              `name:"stop" help:"first stop running workloads of the same name"`
	Deploy DeployFlags       `embed:""`
}

// deployResult is what devrun and run print.
type deployResult struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Node     string   `json:"node_id"`
	Issuer   string   `json:"issuer"`
	Started  bool     `json:"started"`
	Type     string   `json:"type"`
	Location string   `json:"location"`
	Hash     string   `json:"hash"`
	Stopped  []string `json:"stopped,omitempty"`
}

func (c *DevrunCmd) Run(g *Globals, ctx context.Context) error {
	name := c.Name
	if name == "" {
		name = controlclient.NameFromPath(c.File)
	}
	if err := controlclient.ValidName(name); err != nil {
		return err
	}
	typ := workloadType(c.Deploy.Type, c.File)
	env, err := controlclient.ParseEnv(c.Env)
	if err != nil {
		return err
	}
	dir, err := devkeys.Dir("")
	if err != nil {
		return err
	}
	keys, err := devkeys.LoadOrCreate(dir)
	if err != nil {
		return err
	}
	cl, closeConn, err := g.controlClient("devrun")
	if err != nil {
		return err
	}
	defer closeConn()

	node, xkey, err := c.pickNode(ctx, cl, typ)
	if err != nil {
		return err
	}
	var stopped []string
	if c.Stop {
		if stopped, err = stopByName(ctx, cl, g.Namespace, name, keys.Issuer, g.Stderr()); err != nil {
			return err
		}
	}

	f, err := os.Open(c.File)
	if err != nil {
		return fmt.Errorf("open workload file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open workload file: %w", err)
	}
	up, err := cl.Upload(ctx, controlclient.DefaultBucket, name, f, st.Size(), progressLine(g.Stderr(), "upload "+name, st.Size()))
	if err != nil {
		return err
	}
	loc, err := controlclient.NATSLocation(up.Bucket, up.Key)
	if err != nil {
		return err
	}
	res, err := deployment{
		name: name, typ: typ, hash: up.Hash, loc: loc, env: env, node: node, xkey: xkey,
		issuer: keys.Issuer, publisher: keys.Publisher, flags: c.Deploy,
	}.run(ctx, cl, g.Namespace)
	if err != nil {
		return err
	}
	res.Stopped = stopped
	return printDeploy(g.Stdout(), res, c.Deploy.JSON)
}

// pickNode returns the node to run on and its xkey: --node, or the auction
// winner among nodes that take the type and tags (fewest workloads first).
func (c *DevrunCmd) pickNode(ctx context.Context, cl *controlclient.Client, typ string) (string, string, error) {
	if c.Node != "" {
		return nodeXkey(ctx, cl, c.Node)
	}
	bids, err := cl.Auction(ctx, api.AuctionRequest{WorkloadTypes: []string{typ}, Tags: c.Tag})
	if err != nil {
		return "", "", fmt.Errorf("auction: %w", err)
	}
	if len(bids) == 0 {
		what := "a " + typ + " workload"
		if len(c.Tag) > 0 {
			var tags []string
			for _, k := range slices.Sorted(maps.Keys(c.Tag)) {
				tags = append(tags, k+"="+c.Tag[k])
			}
			what += " with tags " + strings.Join(tags, ",")
		}
		return "", "", fmt.Errorf("no node bid for %s (`nex node ls` lists nodes, `nex node info <id>` their types and tags)", what)
	}
	best := bids[0] // bids are sorted by id, so ties go the same way every time
	for _, b := range bids[1:] {
		if b.RunningMachines < best.RunningMachines {
			best = b
		}
	}
	return best.NodeID, best.TargetXkey, nil
}

// nodeXkey resolves a user-given node and asks it for its xkey.
func nodeXkey(ctx context.Context, cl *controlclient.Client, id string) (string, string, error) {
	node, err := resolveNode(ctx, cl, id)
	if err != nil {
		return "", "", err
	}
	p, err := cl.PingNode(ctx, node)
	if err != nil {
		return "", "", err
	}
	return node, p.TargetXkey, nil
}

// workloadType normalises --type, inferring it from path when empty.
func workloadType(flag, path string) string {
	switch flag {
	case "":
		return controlclient.TypeFromPath(path)
	case "js":
		return api.WorkloadV8 // the wire name of JavaScript
	}
	return flag
}

// deployment is everything one deploy request is built from.
type deployment struct {
	name, typ, hash   string
	loc               *api.Location
	env               map[string]string
	node, xkey        string
	issuer, publisher nkeys.KeyPair
	flags             DeployFlags
}

func (d deployment) run(ctx context.Context, cl *controlclient.Client, ns string) (*deployResult, error) {
	tok, err := controlclient.WorkloadJWT(d.issuer, d.name, d.hash)
	if err != nil {
		return nil, err
	}
	sealed, err := controlclient.SealEnvironment(d.publisher, d.xkey, d.env)
	if err != nil {
		return nil, fmt.Errorf("environment for node %s: %w", d.node, err)
	}
	sender, err := d.publisher.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("publisher key: %w", err)
	}
	node := d.node
	req := api.DeployRequest{
		Argv:                 d.flags.Argv,
		WorkloadType:         d.typ,
		Location:             d.loc,
		WorkloadJWT:          &tok,
		EncryptedEnvironment: &sealed,
		SenderPublicKey:      &sender,
		TargetNode:           &node,
		TriggerSubjects:      d.flags.Trigger,
	}
	if d.flags.Description != "" {
		req.Description = &d.flags.Description
	}
	if d.flags.Essential {
		req.Essential = &d.flags.Essential
	}
	res, err := cl.Deploy(ctx, ns, d.node, req)
	if err != nil {
		return nil, err
	}
	if !res.Started {
		return nil, fmt.Errorf("node %s did not start workload %s", d.node, d.name)
	}
	name := res.Name
	if name == "" {
		name = d.name
	}
	return &deployResult{ID: res.ID, Name: name, Node: d.node, Issuer: res.Issuer, Started: res.Started,
		Type: d.typ, Location: d.loc.String(), Hash: d.hash}, nil
}

func printDeploy(w io.Writer, r *deployResult, asJSON bool) error {
	if asJSON {
		return writeJSON(w, r)
	}
	_, err := fmt.Fprintf(w, "workload %s (%s) started on node %s\n", r.ID, r.Name, r.Node)
	return err
}

// stopByName stops every workload called name in ns, wherever it runs,
// reporting each on log. It returns the stopped ids.
func stopByName(ctx context.Context, cl *controlclient.Client, ns, name string, issuer nkeys.KeyPair, log io.Writer) ([]string, error) {
	found, err := cl.WorkloadPing(ctx, ns, name)
	if err != nil {
		return nil, fmt.Errorf("find running %s: %w", name, err)
	}
	// The previous deploy may have been signed this very second; one wait
	// (inside StopJWT) covers every stop below.
	since := time.Now()
	var stopped []string
	for _, n := range found {
		for _, m := range n.RunningMachines {
			if m.Name != name || (m.Namespace != "" && m.Namespace != ns) {
				continue
			}
			tok, err := controlclient.StopJWT(ctx, issuer, name, since)
			if err != nil {
				return stopped, err
			}
			res, err := cl.Stop(ctx, ns, n.NodeID, api.StopRequest{WorkloadID: m.ID, WorkloadJWT: tok, TargetNode: n.NodeID})
			if err != nil {
				return stopped, err
			}
			if !res.Stopped {
				return stopped, fmt.Errorf("node %s did not stop workload %s", n.NodeID, m.ID)
			}
			fmt.Fprintf(log, "stopped workload %s (%s) on node %s\n", m.ID, name, n.NodeID)
			stopped = append(stopped, m.ID)
		}
	}
	return stopped, nil
}

// progressLine reports upload progress of large files on w, at most every
// 200 ms, ending with a newline; small files upload silently.
func progressLine(w io.Writer, label string, size int64) controlclient.Progress {
	const large = 1 << 20
	if size < large {
		return nil
	}
	var last time.Time
	return func(done, total int64) {
		if done < total && time.Since(last) < 200*time.Millisecond {
			return
		}
		last = time.Now()
		fmt.Fprintf(w, "\r%s: %d/%d bytes (%d%%)", label, done, total, done*100/max(total, 1))
		if done >= total {
			fmt.Fprintln(w)
		}
	}
}
