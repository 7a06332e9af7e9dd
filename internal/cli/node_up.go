package cli

// NodeUpCmd is not written yet.
type NodeUpCmd struct{}

func (c *NodeUpCmd) Run(g *Globals) error { return errNotYet }
