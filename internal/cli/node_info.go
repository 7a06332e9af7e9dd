package cli

// NodeInfoCmd is not written yet.
type NodeInfoCmd struct{}

func (c *NodeInfoCmd) Run(g *Globals) error { return errNotYet }
