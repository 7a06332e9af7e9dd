package controlclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/api"
)

// collector gathers what a watch delivers, for reading after Stop.
type collector[T any] struct{ ch chan T }

func newCollector[T any]() *collector[T] { return &collector[T]{ch: make(chan T, 64)} }
func (c *collector[T]) add(v T)          { c.ch <- v }

// next waits for one delivery; a missing one fails the test after a generous
// bound (this is a liveness check, not a timing assertion).
func (c *collector[T]) next(t *testing.T) T {
	t.Helper()
	select {
	case v := <-c.ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("nothing delivered")
	}
	var zero T
	return zero
}

func TestSubscribeEventsFilters(t *testing.T) {
	nc := startServer(t)
	c := New(nc)
	got := newCollector[Event]()
	w, err := c.SubscribeEvents(context.Background(), EventFilter{Namespace: api.SystemNamespace}, got.add)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	publish := func(ns, typ string, data any) {
		raw, _ := json.Marshal(data)
		b, _ := json.Marshal(api.CloudEvent{SpecVersion: "1.0", ID: typ, Source: "NNODE", Type: typ,
			Time: time.Now(), DataContentType: "application/json", Data: raw, Namespace: ns})
		if err := nc.Publish(api.EventSubject(ns, typ), b); err != nil {
			t.Fatal(err)
		}
	}
	publish("default", api.EventWorkloadDeployed, api.WorkloadDeployedEvent{WorkloadName: "echo"})
	publish(api.SystemNamespace, api.EventNodeStarted, api.NodeStartedEvent{ID: "NNODE"})
	if err := nc.Publish(api.EventSubject(api.SystemNamespace, "garbage"), []byte("{not json")); err != nil {
		t.Fatal(err)
	}

	ev := got.next(t)
	if ev.Err != nil || ev.Type() != api.EventNodeStarted || ev.Namespace() != api.SystemNamespace || ev.Event.Source != "NNODE" {
		t.Fatalf("first event = %+v, want node_started from system (the default-namespace one filtered out)", ev)
	}
	bad := got.next(t)
	if bad.Err == nil || bad.Type() != "garbage" || !bytes.Equal(bad.Raw, []byte("{not json")) {
		t.Fatalf("undecodable event = %+v, want Err and type from the subject", bad)
	}
}

func TestLogFilterSubjects(t *testing.T) {
	for _, c := range []struct {
		f    LogFilter
		want []string
	}{
		{LogFilter{Namespace: "default"}, []string{"$NEX.logs.default.*.*", "$NEX.logs.default.*.*.*"}},
		{LogFilter{Namespace: "*", Node: "N1"}, []string{"$NEX.logs.*.N1.*", "$NEX.logs.*.N1.*.*"}},
		{LogFilter{WorkloadID: "w1"}, []string{"$NEX.logs.*.*.w1", "$NEX.logs.*.*.w1.*"}},
		{LogFilter{Namespace: "default", Name: "echo"}, []string{"$NEX.logs.default.*.*.echo"}},
	} {
		if got := c.f.Subjects(); !slices.Equal(got, c.want) {
			t.Errorf("%+v.Subjects() = %v, want %v", c.f, got, c.want)
		}
	}
}

func TestSubscribeLogsWithAndWithoutName(t *testing.T) {
	nc := startServer(t)
	c := New(nc)
	got := newCollector[LogLine]()
	w, err := c.SubscribeLogs(context.Background(), LogFilter{Namespace: "default", WorkloadID: "w1"}, got.add)
	if err != nil {
		t.Fatal(err)
	}
	line := func(subject, text string) {
		b, _ := json.Marshal(api.LogEntry{Namespace: "default", NodeID: "NNODE", WorkloadID: api.Token(subject, 4),
			Timestamp: time.Now(), Text: text})
		if err := nc.Publish(subject, b); err != nil {
			t.Fatal(err)
		}
	}
	line(api.LogSubject("default", "NNODE", "w2", "other"), "not mine")
	line(api.LogSubject("default", "NNODE", "w1", "echo"), "named")
	line(api.LogSubject("default", "NNODE", "w1", ""), "unnamed")

	// One line from each subject, in either order (each subject's lines
	// keep theirs; a workload's use one subject).
	a, b := got.next(t), got.next(t)
	if a.Entry.Text == "unnamed" {
		a, b = b, a
	}
	if a.Entry.Text != "named" || a.Name != "echo" || a.Entry.WorkloadID != "w1" {
		t.Fatalf("named line = %+v", a)
	}
	if b.Entry.Text != "unnamed" || b.Name != "" {
		t.Fatalf("unnamed line = %+v", b)
	}
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	// After Stop nothing more is delivered.
	line(api.LogSubject("default", "NNODE", "w1", "echo"), "late")
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got.ch:
		if strings.Contains(l.Entry.Text, "late") {
			t.Fatalf("delivered after Stop: %+v", l)
		}
	default:
	}
}

// TestSubscribeLogsKeepsAFlood: 100,000 lines published while the handler
// is busy all arrive, in order; once more than watchPendingBytes wait, the
// rest are dropped, and the handler is told how many.
func TestSubscribeLogsKeepsAFlood(t *testing.T) {
	const lines = 100_000
	for _, tc := range []struct {
		name    string
		pending int
		lost    bool
	}{{"all kept", watchPendingBytes, false}, {"over the bound", 1 << 20, true}} {
		t.Run(tc.name, func(t *testing.T) {
			saved := watchPendingBytes
			watchPendingBytes = tc.pending
			defer func() { watchPendingBytes = saved }()
			nc := startServer(t)
			c := New(nc)
			gate := make(chan struct{})
			var got, dropped int
			next := 0
			inOrder := true
			done := make(chan struct{})
			w, err := c.SubscribeLogs(context.Background(), LogFilter{WorkloadID: "w1"}, func(l LogLine) {
				<-gate
				if l.Err != nil {
					var n int
					if _, err := fmt.Sscanf(l.Err.Error(), "%d log lines dropped", &n); err == nil {
						dropped += n
					}
				} else {
					var i int
					_, _ = fmt.Sscanf(l.Entry.Text, "line %d", &i)
					inOrder = inOrder && (tc.lost || i == next)
					next = i + 1
					got++
				}
				if got+dropped == lines {
					close(done)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()
			pub := connect(t, nc.ConnectedUrl())
			for i := range lines {
				b, _ := json.Marshal(api.LogEntry{Namespace: "default", NodeID: "NNODE", WorkloadID: "w1",
					Timestamp: time.Now(), Text: fmt.Sprintf("line %d %s", i, strings.Repeat("x", 80))})
				if err := pub.Publish(api.LogSubject("default", "NNODE", "w1", "flood"), b); err != nil {
					t.Fatal(err)
				}
			}
			if err := pub.Flush(); err != nil {
				t.Fatal(err)
			}
			close(gate)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("%d lines delivered, %d reported dropped, of %d", got, dropped, lines)
			}
			switch {
			case !tc.lost && (got != lines || !inOrder):
				t.Fatalf("%d of %d lines (in order: %v)", got, lines, inOrder)
			case tc.lost && dropped == 0:
				t.Fatalf("%d of %d lines and no drop reported", got, lines)
			}
		})
	}
}
