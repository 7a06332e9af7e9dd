// Package events publishes a node's CloudEvents and workload log lines on
// the control plane ($NEX.events.<ns>.<type>, $NEX.logs.<ns>.<node>.<id>…).
package events

import (
	"encoding/json"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/nex-engine/nex/api"
)

// Publisher emits events and logs for one node.
type Publisher struct {
	nc     *nats.Conn
	nodeID string
	log    *slog.Logger
}

// NewPublisher returns a publisher for events whose source is nodeID.
func NewPublisher(nc *nats.Conn, nodeID string, log *slog.Logger) *Publisher {
	return &Publisher{nc: nc, nodeID: nodeID, log: log}
}

// Emit publishes a CloudEvent of type typ in namespace ns.
func (p *Publisher) Emit(ns, typ string, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		p.log.Error("encode event", "type", typ, "error", err)
		return
	}
	ev := api.CloudEvent{
		SpecVersion:     "1.0",
		ID:              nuid.Next(),
		Source:          p.nodeID,
		Type:            typ,
		Time:            time.Now().UTC(),
		DataContentType: "application/json",
		Data:            raw,
		Namespace:       ns,
	}
	b, _ := json.Marshal(ev)
	if err := p.nc.Publish(api.EventSubject(ns, typ), b); err != nil {
		p.log.Warn("publish event", "type", typ, "error", err)
	}
}

// Log publishes one workload log line.
func (p *Publisher) Log(ns, workloadID, name, text string, level slog.Level, at time.Time) {
	e := api.LogEntry{Namespace: ns, NodeID: p.nodeID, WorkloadID: workloadID, Timestamp: at,
		Text: text, Level: int(level), ID: nuid.Next()}
	b, _ := json.Marshal(e)
	if err := p.nc.Publish(api.LogSubject(ns, p.nodeID, workloadID, name), b); err != nil {
		p.log.Debug("publish log", "error", err)
	}
}

// Flush waits until published messages reached the server.
func (p *Publisher) Flush() error { return p.nc.FlushTimeout(2 * time.Second) }
