package cli

// LogsCmd is not written yet.
type LogsCmd struct{}

func (c *LogsCmd) Run(g *Globals) error { return errNotYet }
