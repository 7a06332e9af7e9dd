package cli

// RootfsCmd is not written yet.
type RootfsCmd struct{}

func (c *RootfsCmd) Run(g *Globals) error { return errNotYet }
