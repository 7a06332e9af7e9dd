package cli

// NodePreflightCmd is not written yet.
type NodePreflightCmd struct{}

func (c *NodePreflightCmd) Run(g *Globals) error { return errNotYet }
