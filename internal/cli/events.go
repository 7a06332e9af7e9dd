package cli

// EventsCmd is not written yet.
type EventsCmd struct{}

func (c *EventsCmd) Run(g *Globals) error { return errNotYet }
