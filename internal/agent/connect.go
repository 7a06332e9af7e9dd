package agent

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/agentapi"
)

// connect dials the node's internal NATS as the sandbox's nkey user,
// retrying with a bounded backoff until ctx ends: in a VM the network (or
// the host's forward) may come up a moment after the agent.
func (a *agent) connect(ctx context.Context) (*nats.Conn, error) {
	kp, err := nkeys.FromSeed([]byte(a.o.Meta.Seed))
	if err != nil {
		return nil, fmt.Errorf("agent: seed: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("agent: seed: %w", err)
	}
	opts := []nats.Option{
		nats.Name("nex-agent " + a.id),
		nats.Nkey(pub, kp.Sign),
		nats.CustomInboxPrefix(agentapi.InboxPrefix(a.id)),
		nats.ReconnectWait(reconnectWait),
		nats.MaxReconnects(maxReconnects),
		// Logs are what piles up during an outage; a few MiB is plenty and
		// keeps a wedged agent from growing.
		nats.ReconnectBufSize(4 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				a.log.Warn("disconnected from node", keyError, err)
			}
		}),
		nats.ReconnectHandler(func(*nats.Conn) { a.log.Info("reconnected to node") }),
		nats.ClosedHandler(func(*nats.Conn) {
			a.mu.Lock()
			closing := a.closing
			a.mu.Unlock()
			if !closing {
				a.log.Error("connection to node closed for good")
			}
			close(a.closed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, s *nats.Subscription, err error) {
			subject := ""
			if s != nil {
				subject = s.Subject
			}
			a.log.Warn("nats error", "subject", subject, keyError, err)
		}),
	}
	if a.o.Dialer != nil {
		// The URL's host is no name to look up (vsock://2:4222).
		opts = append(opts, nats.SetCustomDialer(a.o.Dialer), nats.SkipHostLookup())
	}
	for wait := retryMin; ; wait = min(2*wait, retryMax) {
		nc, err := nats.Connect(a.o.Meta.NATSURL, opts...)
		if err == nil {
			a.log.Debug("connected to node", "url", nc.ConnectedUrlRedacted())
			return nc, nil
		}
		a.log.Debug("connect to node", "url", a.o.Meta.NATSURL, keyError, err)
		if err := sleep(ctx, wait); err != nil {
			return nil, fmt.Errorf("agent: connect %s: %w", a.o.Meta.NATSURL, err)
		}
	}
}
