package cli

// AgentCmd is not written yet.
type AgentCmd struct{}

func (c *AgentCmd) Run(g *Globals) error { return errNotYet }
