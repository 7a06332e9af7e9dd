package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
)

// EventsCmd follows events ($NEX.events.<ns>.<type>) of the namespace, and
// node events (namespace system) unless --no-system, until interrupted or
// until --count events have been shown. --namespace '*' follows every
// namespace.
type EventsCmd struct {
	Type   string `name:"type" help:"only this event type (e.g. workload_deployed, heartbeat)"`
	System bool   `name:"system" default:"true" negatable:"" help:"also follow node events (namespace system)"`
	Count  int    `name:"count" help:"exit after this many events (0: follow until interrupted)"`
	JSON   bool   `name:"json" help:"print each event as its CloudEvents JSON, one per line"`
}

func (c *EventsCmd) Run(g *Globals, ctx context.Context) error {
	cl, closeConn, err := g.controlClient("events")
	if err != nil {
		return err
	}
	defer closeConn()
	namespaces := []string{g.Namespace}
	if c.System && g.Namespace != "*" && g.Namespace != api.SystemNamespace {
		namespaces = append(namespaces, api.SystemNamespace)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	out := &streamOut{g: g, limit: c.Count, stop: stop}
	handle := func(ev controlclient.Event) {
		if c.JSON {
			out.emit(func() error {
				var buf bytes.Buffer
				if err := json.Compact(&buf, ev.Raw); err != nil {
					return writeJSONLine(g.Stdout(), map[string]string{"subject": ev.Subject, "error": ev.Err.Error()})
				}
				buf.WriteByte('\n')
				_, err := g.Stdout().Write(buf.Bytes())
				return err
			})
			return
		}
		if ev.Err != nil {
			out.warn(ev.Err)
			return
		}
		out.emit(func() error {
			_, err := fmt.Fprintf(g.Stdout(), "%s %s %s %s%s\n", clock(ev.Event.Time), ev.Namespace(),
				shortID(ev.Event.Source), ev.Type(), flatten(ev.Event.Data))
			return err
		})
	}
	var watches []*controlclient.Watch
	defer func() {
		for _, w := range watches {
			w.Stop()
		}
	}()
	for _, ns := range namespaces {
		w, err := cl.SubscribeEvents(ctx, controlclient.EventFilter{Namespace: ns, Type: c.Type}, handle)
		if err != nil {
			return err
		}
		watches = append(watches, w)
	}
	<-ctx.Done()
	return out.err()
}

// flatten renders event data as " k=v k=v" with sorted keys, strings bare
// unless they need quotes, other values as JSON.
func flatten(data json.RawMessage) string {
	var m map[string]json.RawMessage
	if len(data) == 0 || json.Unmarshal(data, &m) != nil {
		if len(data) == 0 || string(data) == "null" {
			return ""
		}
		return " " + string(data)
	}
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := string(m[k])
		var s string
		if json.Unmarshal(m[k], &s) == nil {
			v = s
			if s == "" || strings.ContainsAny(s, " \t\n\"=") {
				v = strconv.Quote(s)
			}
		} else {
			var buf bytes.Buffer
			if json.Compact(&buf, m[k]) == nil {
				v = buf.String()
			}
		}
		b.WriteString(" " + k + "=" + v)
	}
	return b.String()
}
