package cli

// NodeLameduckCmd is not written yet.
type NodeLameduckCmd struct{}

func (c *NodeLameduckCmd) Run(g *Globals) error { return errNotYet }
