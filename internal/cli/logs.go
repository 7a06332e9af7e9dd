package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
)

// LogsCmd follows workload log lines ($NEX.logs.<ns>.<node>.<id>[.<name>])
// until interrupted, or until --count lines have been shown.
type LogsCmd struct {
	Node     string `name:"node" help:"only this node (id, id prefix or name)"`
	Workload string `name:"workload" help:"only this workload id"`
	Name     string `name:"name" help:"only workloads with this name"`
	Count    int    `name:"count" help:"exit after this many lines (0: follow until interrupted)"`
	JSON     bool   `name:"json" help:"print each line as a JSON object"`
}

// logJSON is one --json log line: the node's entry plus the name from the
// subject.
type logJSON struct {
	api.LogEntry
	Name string `json:"name,omitempty"`
}

func (c *LogsCmd) Run(g *Globals, ctx context.Context) error {
	cl, closeConn, err := g.controlClient("logs")
	if err != nil {
		return err
	}
	defer closeConn()
	node := c.Node
	if node != "" {
		if node, err = resolveNode(ctx, cl, node); err != nil {
			return err
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	out := &streamOut{g: g, limit: c.Count, stop: stop}
	w, err := cl.SubscribeLogs(ctx, controlclient.LogFilter{
		Namespace: g.Namespace, Node: node, WorkloadID: c.Workload, Name: c.Name,
	}, func(l controlclient.LogLine) {
		if l.Err != nil {
			out.warn(l.Err)
			return
		}
		if c.JSON {
			out.emit(func() error { return writeJSONLine(g.Stdout(), logJSON{l.Entry, l.Name}) })
			return
		}
		out.emit(func() error {
			_, err := fmt.Fprintf(g.Stdout(), "%s %s %s %s: %s\n", clock(l.Entry.Timestamp), shortID(l.Entry.NodeID),
				l.Entry.WorkloadID, orDash(l.Name), strings.TrimRight(l.Entry.Text, "\r\n"))
			return err
		})
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	w.Stop()
	return out.err()
}

// streamOut serialises output of followed streams (several subscriptions may
// deliver at once) and ends the command after limit lines.
type streamOut struct {
	g      *Globals
	limit  int
	stop   context.CancelFunc
	mu     sync.Mutex
	n      int
	werr   error
	closed bool
}

func (s *streamOut) emit(write func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if err := write(); err != nil && s.werr == nil {
		s.werr = err // e.g. a closed pipe: stop following
		s.closed = true
		s.stop()
		return
	}
	s.n++
	if s.limit > 0 && s.n >= s.limit {
		s.closed = true
		s.stop()
	}
}

func (s *streamOut) warn(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintln(s.g.Stderr(), "nex:", err)
}

func (s *streamOut) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.werr
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
