package cli

// RunCmd is not written yet.
type RunCmd struct{}

func (c *RunCmd) Run(g *Globals) error { return errNotYet }
