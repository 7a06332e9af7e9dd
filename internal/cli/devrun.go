package cli

// DevrunCmd is not written yet.
type DevrunCmd struct{}

func (c *DevrunCmd) Run(g *Globals) error { return errNotYet }
