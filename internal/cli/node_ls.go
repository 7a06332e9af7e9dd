package cli

// NodeLsCmd is not written yet.
type NodeLsCmd struct{}

func (c *NodeLsCmd) Run(g *Globals) error { return errNotYet }
