// Package controlapi serves a node's control subjects ($NEX.PING, INFO,
// DEPLOY, STOP, LAMEDUCK, AUCTION, WPING) on the control-plane connection:
// it decodes requests, calls the node, and encodes every answer — refusals
// included — in the envelope of shared/PROTOCOL.md.
package controlapi

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
)

// Node is what the control API needs from a node.
type Node interface {
	ID() string
	Ping() api.PingResponse
	// Bid answers an auction; ok=false means the node does not match.
	Bid(req api.AuctionRequest) (api.PingResponse, bool)
	// WorkloadPing answers a WPING; ok=false when nothing matches.
	WorkloadPing(ns, idOrName string) (api.WorkloadPingResponse, bool)
	Info(ns string) api.InfoResponse
	Deploy(ctx context.Context, ns string, req api.DeployRequest) (api.RunResponse, error)
	StopWorkload(ctx context.Context, ns string, req api.StopRequest) (api.StopResponse, error)
	EnterLameDuck(ctx context.Context) error
}

// Server subscribes the control subjects for one node.
type Server struct {
	nc   *nats.Conn
	node Node
	log  *slog.Logger
	subs []*nats.Subscription
	// RequestTimeout bounds deploy and stop handling.
	RequestTimeout time.Duration
}

// New returns a server; call Start to subscribe.
func New(nc *nats.Conn, node Node, log *slog.Logger) *Server {
	return &Server{nc: nc, node: node, log: log, RequestTimeout: 2 * time.Minute}
}

// Start subscribes every control subject. Deploys and stops run each in its
// own goroutine so a slow one never holds up pings.
func (s *Server) Start() error {
	id := s.node.ID()
	type route struct {
		subject string
		handle  nats.MsgHandler
	}
	routes := []route{
		{api.PingSubject(), s.ping},
		{api.PingNodeSubject(id), s.ping},
		{api.AuctionSubject(), s.auction},
		{api.WPingSubject("*", ""), s.wping},
		{api.WPingSubject("*", "*"), s.wping},
		{api.InfoSubject("*", id), s.info},
		{api.DeploySubject("*", id), s.async(s.deploy)},
		{api.StopSubject("*", id), s.async(s.stop)},
		{api.LameDuckSubject(id), s.async(s.lameduck)},
	}
	for _, r := range routes {
		sub, err := s.nc.Subscribe(r.subject, r.handle)
		if err != nil {
			s.Stop()
			return fmt.Errorf("subscribe %s: %w", r.subject, err)
		}
		s.subs = append(s.subs, sub)
	}
	return s.nc.Flush()
}

// Stop unsubscribes everything.
func (s *Server) Stop() {
	for _, sub := range s.subs {
		_ = sub.Unsubscribe()
	}
	s.subs = nil
}

func (s *Server) async(h nats.MsgHandler) nats.MsgHandler {
	return func(m *nats.Msg) { go h(m) }
}

func (s *Server) respond(m *nats.Msg, typ string, data any, err error) {
	if m.Reply == "" {
		return
	}
	var b []byte
	if err != nil {
		b = api.ErrorEnvelope(typ, err)
	} else if b, err = api.NewEnvelope(typ, data); err != nil {
		b = api.ErrorEnvelope(typ, err)
	}
	if err := m.Respond(b); err != nil {
		s.log.Warn("control reply failed", "subject", m.Subject, "error", err)
	}
}

func (s *Server) ping(m *nats.Msg) {
	s.respond(m, api.TypePingResponse, s.node.Ping(), nil)
}

func (s *Server) auction(m *nats.Msg) {
	var req api.AuctionRequest
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &req); err != nil {
			// A malformed auction is answered only by the node it
			// cannot match anyway; stay silent like a non-matching node.
			s.log.Debug("malformed auction request", "error", err)
			return
		}
	}
	if bid, ok := s.node.Bid(req); ok {
		s.respond(m, api.TypeAuctionResponse, bid, nil)
	}
}

func (s *Server) wping(m *nats.Msg) {
	// $NEX.WPING.<ns>[.<id or name>]
	ns := api.Token(m.Subject, 2)
	target := strings.Join(strings.Split(m.Subject, ".")[min(3, len(strings.Split(m.Subject, "."))):], ".")
	if resp, ok := s.node.WorkloadPing(ns, target); ok {
		s.respond(m, api.TypeWPingResponse, resp, nil)
	}
}

func (s *Server) info(m *nats.Msg) {
	s.respond(m, api.TypeInfoResponse, s.node.Info(api.Token(m.Subject, 2)), nil)
}

func (s *Server) deploy(m *nats.Msg) {
	ns := api.Token(m.Subject, 2)
	var req api.DeployRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		s.respond(m, api.TypeRunResponse, nil, fmt.Errorf("invalid deploy request: malformed JSON: %v", err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.RequestTimeout)
	defer cancel()
	resp, err := s.node.Deploy(ctx, ns, req)
	if err != nil {
		s.log.Warn("deploy refused", "namespace", ns, "error", err)
	}
	s.respond(m, api.TypeRunResponse, resp, err)
}

func (s *Server) stop(m *nats.Msg) {
	ns := api.Token(m.Subject, 2)
	var req api.StopRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		s.respond(m, api.TypeStopResponse, nil, fmt.Errorf("invalid stop request: malformed JSON: %v", err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.RequestTimeout)
	defer cancel()
	resp, err := s.node.StopWorkload(ctx, ns, req)
	if err != nil {
		s.log.Warn("stop refused", "namespace", ns, "error", err)
	}
	s.respond(m, api.TypeStopResponse, resp, err)
}

func (s *Server) lameduck(m *nats.Msg) {
	err := s.node.EnterLameDuck(context.Background())
	s.respond(m, api.TypeLameDuckResponse, api.LameDuckResponse{NodeID: s.node.ID(), Success: err == nil}, err)
}
