package controlclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
)

// Subject token positions: $NEX.events.<ns>.<type> and
// $NEX.logs.<ns>.<node>.<id>[.<name>].
const (
	tokNamespace = 2
	tokEventType = 3
	tokLogNode   = 3
	tokLogID     = 4
	tokLogName   = 5
)

// Watch is a live subscription to events or logs; Stop ends it.
type Watch struct {
	subs   []*nats.Subscription
	once   sync.Once
	done   chan struct{} // closed by Stop
	exited chan struct{} // closed when the handler goroutine returns
}

// Stop unsubscribes and returns once the handler has finished its last call,
// so nothing is delivered after Stop. Do not call it from the handler.
func (w *Watch) Stop() error {
	var errs []error
	w.once.Do(func() {
		for _, s := range w.subs {
			errs = append(errs, s.Unsubscribe())
		}
		close(w.done)
		<-w.exited
	})
	return errors.Join(errs...)
}

// EventFilter selects events; an empty field matches everything.
type EventFilter struct {
	Namespace string // "system" for node events; "" or "*" any
	Type      string // e.g. api.EventWorkloadDeployed; "" or "*" any
}

// Subject is the subscription subject of f.
func (f EventFilter) Subject() string {
	return api.EventSubject(wild(f.Namespace), wild(f.Type))
}

// Event is one event received, with the raw body for faithful --json output.
// Err is set (and Event partial) when the body did not decode.
type Event struct {
	Subject string
	Raw     []byte
	Event   api.CloudEvent
	Err     error
}

// Namespace is the event's namespace, from its subject when the body omits it.
func (e Event) Namespace() string {
	if e.Event.Namespace != "" {
		return e.Event.Namespace
	}
	return api.Token(e.Subject, tokNamespace)
}

// Type is the event type, from its subject when the body omits it.
func (e Event) Type() string {
	if e.Event.Type != "" {
		return e.Event.Type
	}
	return api.Token(e.Subject, tokEventType)
}

// SubscribeEvents calls fn for each event matching f until the Watch is
// stopped. When it returns, the server knows the subscription, so events
// published afterwards are seen. fn runs on one goroutine, in order.
func (c *Client) SubscribeEvents(ctx context.Context, f EventFilter, fn func(Event)) (*Watch, error) {
	return c.watch(ctx, []string{f.Subject()}, func(m *nats.Msg) {
		ev := Event{Subject: m.Subject, Raw: m.Data}
		if err := json.Unmarshal(m.Data, &ev.Event); err != nil {
			ev.Err = fmt.Errorf("decode event on %s: %w", m.Subject, err)
		}
		fn(ev)
	}, func(n int) {
		fn(Event{Err: fmt.Errorf("%d events dropped: this client took them too slowly", n)})
	})
}

// LogFilter selects workload log lines; an empty field matches everything.
type LogFilter struct {
	Namespace  string // "" or "*" any
	Node       string
	WorkloadID string
	Name       string
}

// Subjects are the subscription subjects of f. Log subjects end with an
// optional name token, so without a name filter both lengths are needed
// ("<id>" and "<id>.*"); ">" would also match longer subjects nobody sends.
func (f LogFilter) Subjects() []string {
	base := api.LogSubject(wild(f.Namespace), wild(f.Node), wild(f.WorkloadID), "")
	if f.Name != "" {
		return []string{base + "." + f.Name}
	}
	return []string{base, base + ".*"}
}

// LogLine is one log line received. Name comes from the subject.
type LogLine struct {
	Subject string
	Raw     []byte
	Entry   api.LogEntry
	Name    string
	Err     error
}

// SubscribeLogs calls fn for each log line matching f until the Watch is
// stopped; like SubscribeEvents, it is live when it returns. fn runs on one
// goroutine; the lines of each subject come in order (a workload's lines
// use one subject). A flood waits for fn; see watch for the bound.
func (c *Client) SubscribeLogs(ctx context.Context, f LogFilter, fn func(LogLine)) (*Watch, error) {
	return c.watch(ctx, f.Subjects(), func(m *nats.Msg) {
		l := LogLine{Subject: m.Subject, Raw: m.Data, Name: api.Token(m.Subject, tokLogName)}
		if err := json.Unmarshal(m.Data, &l.Entry); err != nil {
			l.Err = fmt.Errorf("decode log line on %s: %w", m.Subject, err)
		}
		// Fill what the body left out from the subject, which is authoritative
		// for routing anyway.
		if l.Entry.Namespace == "" {
			l.Entry.Namespace = api.Token(m.Subject, tokNamespace)
		}
		if l.Entry.NodeID == "" {
			l.Entry.NodeID = api.Token(m.Subject, tokLogNode)
		}
		if l.Entry.WorkloadID == "" {
			l.Entry.WorkloadID = api.Token(m.Subject, tokLogID)
		}
		fn(l)
	}, func(n int) {
		fn(LogLine{Err: fmt.Errorf("%d log lines dropped: this client took them too slowly", n)})
	})
}

// watchPendingBytes bounds what a Watch holds that its handler has not
// taken yet. A workload that floods its log sends faster than a terminal
// prints; until this bound, nothing is lost.
var watchPendingBytes = 256 << 20

// watch subscribes to subjects and hands their messages to handle on one
// goroutine, so that handlers never run concurrently; it flushes so the
// subscription is live on return. Messages wait in each subscription's
// queue (up to watchPendingBytes) while handle is busy; if more come, the
// client drops them, and dropped is called with how many, once a second
// at most, on handle's goroutine.
func (c *Client) watch(ctx context.Context, subjects []string, handle func(*nats.Msg), dropped func(n int)) (*Watch, error) {
	ch := make(chan *nats.Msg)
	w := &Watch{done: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(w.exited)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		reported := 0
		for {
			select {
			case m := <-ch:
				handle(m)
			case <-tick.C:
				if n := w.dropped(); n > reported {
					dropped(n - reported)
					reported = n
				}
			case <-w.done:
				return
			}
		}
	}()
	for _, s := range subjects {
		sub, err := c.nc.Subscribe(s, func(m *nats.Msg) {
			select {
			case ch <- m:
			case <-w.done:
			}
		})
		if err == nil {
			err = sub.SetPendingLimits(-1, watchPendingBytes)
		}
		if err != nil {
			w.Stop()
			return nil, fmt.Errorf("subscribe %s: %w", s, err)
		}
		w.subs = append(w.subs, sub)
	}
	fctx, cancel := bound(ctx, c.timeout)
	defer cancel()
	if err := c.nc.FlushWithContext(fctx); err != nil {
		w.Stop()
		return nil, fmt.Errorf("subscribe %v: %w", subjects, err)
	}
	return w, nil
}

// dropped is how many messages the client dropped for w's subscriptions.
func (w *Watch) dropped() int {
	n := 0
	for _, s := range w.subs {
		if d, err := s.Dropped(); err == nil {
			n += d
		}
	}
	return n
}

func wild(s string) string {
	if s == "" {
		return "*"
	}
	return s
}
