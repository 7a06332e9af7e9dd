package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/devkeys"
)

// RunCmd deploys an artifact that is already in an object store (or on the
// node's file system, where the node allows file://), with explicit keys.
type RunCmd struct {
	Location  string      `arg:"" name:"location" help:"artifact location: nats://BUCKET/key (or file:///path where the node allows it)"`
	Node      string      `arg:"" name:"node" help:"node id (N…), a unique prefix of it, or the node's name"`
	Env       []string    `arg:"" optional:"" name:"env" help:"environment as KEY=value (sealed so only the node reads it)"`
	Xkey      string      `name:"xkey" help:"the node's public xkey (X…) to seal the environment to (default: asked from the node)"`
	Issuer    string      `name:"issuer" type:"path" help:"account seed file that signs the workload JWT (default ~/.nex/issuer.nk)"`
	Publisher string      `name:"publisher" type:"path" help:"curve (xkey) seed file that seals the environment (default ~/.nex/publisher.xk)"`
	Name      string      `name:"name" help:"workload name (default: the object key without extension)"`
	Hash      string      `name:"hash" help:"hex sha256 of the artifact (default: read the artifact and compute it)"`
	Deploy    DeployFlags `embed:""`
}

func (c *RunCmd) Run(g *Globals, ctx context.Context) error {
	loc, err := api.ParseLocation(c.Location)
	if err != nil {
		return err
	}
	var key string
	switch loc.Scheme {
	case "nats":
		if loc.Bucket() == "" || loc.Key() == "" {
			return fmt.Errorf("location %s: want nats://BUCKET/key", c.Location)
		}
		key = loc.Key()
	case "file":
		key = loc.Path
	default:
		return fmt.Errorf("location %s: scheme must be nats:// or file://", c.Location)
	}
	name := c.Name
	if name == "" {
		name = controlclient.NameFromPath(key)
	}
	if err := controlclient.ValidName(name); err != nil {
		return err
	}
	env, err := controlclient.ParseEnv(c.Env)
	if err != nil {
		return err
	}
	issuer, publisher, err := c.keys()
	if err != nil {
		return err
	}
	cl, node, closeConn, err := g.nodeClient(ctx, "run", c.Node)
	if err != nil {
		return err
	}
	defer closeConn()
	xkey := c.Xkey
	if xkey == "" {
		if _, xkey, err = nodeXkey(ctx, cl, node); err != nil {
			return err
		}
	}
	hash := c.Hash
	if hash == "" {
		if hash, err = c.artifactHash(ctx, cl, loc); err != nil {
			return err
		}
	}
	res, err := deployment{
		name: name, typ: workloadType(c.Deploy.Type, key), hash: hash, loc: loc, env: env,
		node: node, xkey: xkey, issuer: issuer, publisher: publisher, flags: c.Deploy,
	}.run(ctx, cl, g.Namespace)
	if err != nil {
		return err
	}
	return printDeploy(g.Stdout(), res, c.Deploy.JSON)
}

// keys loads the signing keys: the given files, else the developer's.
func (c *RunCmd) keys() (issuer, publisher nkeys.KeyPair, err error) {
	dir, err := devkeys.Dir("")
	if err != nil && (c.Issuer == "" || c.Publisher == "") {
		return nil, nil, err
	}
	if c.Issuer != "" {
		issuer, err = devkeys.LoadIssuer(c.Issuer)
	} else {
		issuer, err = devkeys.LoadOrCreateIssuer(filepath.Join(dir, devkeys.IssuerFile))
	}
	if err != nil {
		return nil, nil, err
	}
	if c.Publisher != "" {
		publisher, err = devkeys.LoadPublisher(c.Publisher)
	} else {
		publisher, err = devkeys.LoadOrCreatePublisher(filepath.Join(dir, devkeys.PublisherFile))
	}
	if err != nil {
		return nil, nil, err
	}
	return issuer, publisher, nil
}

// artifactHash reads the artifact to compute the hash the JWT pins.
func (c *RunCmd) artifactHash(ctx context.Context, cl *controlclient.Client, loc *api.Location) (string, error) {
	if loc.Scheme == "nats" {
		hash, _, err := cl.HashObject(ctx, loc.Bucket(), loc.Key())
		return hash, err
	}
	// file:// names a path on the node; it can only be hashed here when this
	// is the same machine.
	f, err := os.Open(loc.Path)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w (give --hash when the file is not on this machine)", loc.Path, err)
	}
	defer f.Close()
	hash, _, err := controlclient.HashReader(f)
	return hash, err
}
