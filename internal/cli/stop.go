package cli

// StopCmd is not written yet.
type StopCmd struct{}

func (c *StopCmd) Run(g *Globals) error { return errNotYet }
