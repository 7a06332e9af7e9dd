// Package controlclient is the client side of the nex control plane: it asks
// nodes questions over NATS ($NEX.PING, INFO, AUCTION, WPING, DEPLOY, STOP,
// LAMEDUCK, as shared/PROTOCOL.md defines them), follows their events and
// logs, and builds what a deploy needs (workload JWTs, sealed environments).
package controlclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
)

// Defaults for the collection windows; see Client.
const (
	DefaultStall         = 250 * time.Millisecond
	MinStall             = 25 * time.Millisecond
	DefaultQuiet         = 2 * time.Second
	DefaultTimeout       = 5 * time.Second
	DefaultDeployTimeout = time.Minute
)

// ErrNoNodes means no nex node answered a request that every node (or the
// named node) should have answered.
var ErrNoNodes = errors.New("no nex nodes answered")

// NoNodesError is ErrNoNodes with what the user needs to act: where we looked.
type NoNodesError struct {
	URL  string // server the client is connected to (password redacted)
	Node string // the node asked for, when one was
}

func (e *NoNodesError) Error() string {
	if e.Node != "" {
		return fmt.Sprintf("nex node %s did not answer on %s — is it running? (`nex node ls` lists nodes)", e.Node, e.URL)
	}
	return fmt.Sprintf("no nex nodes answered on %s — is `nex node up` running?", e.URL)
}

// Is makes errors.Is(err, ErrNoNodes) true.
func (e *NoNodesError) Is(target error) bool { return target == ErrNoNodes }

// Client talks to nex nodes over an established NATS connection.
//
// Requests that every node answers ($NEX.PING) collect replies until none
// has arrived for the stall window after the last one, so a listing takes
// about one round trip plus the stall instead of a fixed wait. Requests that
// only some nodes answer (AUCTION, WPING) wait at most the quiet window for a
// first reply, because there silence is an answer.
type Client struct {
	nc            *nats.Conn
	stall         time.Duration
	quiet         time.Duration
	timeout       time.Duration
	deployTimeout time.Duration
}

// Option configures a Client.
type Option func(*Client)

// WithStall sets how long after the last reply a collection stops.
func WithStall(d time.Duration) Option { return func(c *Client) { c.stall = d } }

// WithQuiet sets how long AUCTION and WPING wait for a first reply.
func WithQuiet(d time.Duration) Option { return func(c *Client) { c.quiet = d } }

// WithTimeout bounds each request whose ctx has no deadline.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithDeployTimeout bounds a deploy whose ctx has no deadline; a deploy may
// wait for a sandbox and an artifact transfer, so it gets longer than other
// requests (never less than the general timeout).
func WithDeployTimeout(d time.Duration) Option { return func(c *Client) { c.deployTimeout = d } }

// New returns a client on nc.
func New(nc *nats.Conn, opts ...Option) *Client {
	c := &Client{nc: nc, stall: DefaultStall, quiet: DefaultQuiet, timeout: DefaultTimeout,
		deployTimeout: DefaultDeployTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// Conn is the underlying connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

func (c *Client) url() string {
	if u := c.nc.ConnectedUrlRedacted(); u != "" {
		return u
	}
	return strings.Join(c.nc.Servers(), ",")
}

// bound applies d when ctx has no deadline of its own.
func bound(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || d <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}

// Ping lists every node, sorted by id.
func (c *Client) Ping(ctx context.Context) ([]api.PingResponse, error) {
	replies, err := c.collect(ctx, api.PingSubject(), nil, false)
	if err != nil {
		return nil, err
	}
	return decodeAll[api.PingResponse](replies, func(p api.PingResponse) string { return p.NodeID })
}

// Auction asks the nodes that satisfy req to bid; none matching is an empty
// list, no node at all is ErrNoNodes.
func (c *Client) Auction(ctx context.Context, req api.AuctionRequest) ([]api.PingResponse, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encode auction request: %w", err)
	}
	replies, err := c.collect(ctx, api.AuctionSubject(), b, true)
	if err != nil {
		return nil, err
	}
	return decodeAll[api.PingResponse](replies, func(p api.PingResponse) string { return p.NodeID })
}

// WorkloadPing finds the nodes running workloads of ns (matching idOrName
// when given). Nothing running anywhere is an empty list.
func (c *Client) WorkloadPing(ctx context.Context, ns, idOrName string) ([]api.WorkloadPingResponse, error) {
	replies, err := c.collect(ctx, api.WPingSubject(ns, idOrName), nil, true)
	if errors.Is(err, ErrNoNodes) {
		return nil, nil // no node subscribed: nothing runs
	}
	if err != nil {
		return nil, err
	}
	return decodeAll[api.WorkloadPingResponse](replies, func(p api.WorkloadPingResponse) string { return p.NodeID })
}

// PingNode asks one node.
func (c *Client) PingNode(ctx context.Context, node string) (*api.PingResponse, error) {
	var out api.PingResponse
	if err := c.request(ctx, c.timeout, api.PingNodeSubject(node), node, nil, &out); err != nil {
		return nil, fmt.Errorf("ping node %s: %w", node, err)
	}
	return &out, nil
}

// Info describes one node and its workloads in ns.
func (c *Client) Info(ctx context.Context, ns, node string) (*api.InfoResponse, error) {
	var out api.InfoResponse
	if err := c.request(ctx, c.timeout, api.InfoSubject(ns, node), node, nil, &out); err != nil {
		return nil, fmt.Errorf("info of node %s: %w", node, err)
	}
	return &out, nil
}

// Deploy asks node to run a workload in ns.
func (c *Client) Deploy(ctx context.Context, ns, node string, req api.DeployRequest) (*api.RunResponse, error) {
	var out api.RunResponse
	if err := c.request(ctx, max(c.deployTimeout, c.timeout), api.DeploySubject(ns, node), node, req, &out); err != nil {
		return nil, fmt.Errorf("deploy on node %s: %w", node, err)
	}
	return &out, nil
}

// Stop asks node to stop a workload in ns.
func (c *Client) Stop(ctx context.Context, ns, node string, req api.StopRequest) (*api.StopResponse, error) {
	var out api.StopResponse
	if err := c.request(ctx, c.timeout, api.StopSubject(ns, node), node, req, &out); err != nil {
		return nil, fmt.Errorf("stop %s on node %s: %w", req.WorkloadID, node, err)
	}
	return &out, nil
}

// LameDuck puts node in lame-duck mode.
func (c *Client) LameDuck(ctx context.Context, node string) (*api.LameDuckResponse, error) {
	var out api.LameDuckResponse
	if err := c.request(ctx, c.timeout, api.LameDuckSubject(node), node, nil, &out); err != nil {
		return nil, fmt.Errorf("lame duck node %s: %w", node, err)
	}
	return &out, nil
}

// request is one request to one node.
func (c *Client) request(ctx context.Context, timeout time.Duration, subj, node string, req, out any) error {
	var data []byte
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		data = b
	}
	ctx, cancel := bound(ctx, timeout)
	defer cancel()
	msg, err := c.nc.RequestWithContext(ctx, subj, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return &NoNodesError{URL: c.url(), Node: node}
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no reply on %s within %s: %w", subj, timeout.Round(time.Millisecond), err)
	case err != nil:
		return fmt.Errorf("request %s: %w", subj, err)
	}
	return api.DecodeEnvelope(msg.Data, out)
}

// collect publishes one request and gathers replies (see Client). silenceOK
// says that no reply within the quiet window is a valid, empty answer.
func (c *Client) collect(ctx context.Context, subj string, data []byte, silenceOK bool) ([][]byte, error) {
	ctx, cancel := bound(ctx, c.timeout)
	defer cancel()
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", inbox, err)
	}
	defer sub.Unsubscribe()
	if err := c.nc.PublishRequest(subj, inbox, data); err != nil {
		return nil, fmt.Errorf("request %s: %w", subj, err)
	}
	var replies [][]byte
	sent := time.Now()
	stall := c.stall
	for {
		wait := stall
		if len(replies) == 0 {
			wait = 0 // until ctx ends
			if silenceOK {
				wait = c.quiet
			}
		}
		wctx, wcancel := ctx, context.CancelFunc(func() {})
		if wait > 0 {
			wctx, wcancel = context.WithTimeout(ctx, wait)
		}
		msg, err := sub.NextMsgWithContext(wctx)
		wcancel()
		switch {
		case err == nil:
			if len(replies) == 0 {
				stall = adaptiveStall(time.Since(sent), c.stall)
			}
			replies = append(replies, msg.Data)
			continue
		case errors.Is(err, nats.ErrNoResponders):
			// The server says nobody subscribes: no need to wait any longer.
			if len(replies) == 0 {
				return nil, &NoNodesError{URL: c.url()}
			}
			return replies, nil
		case errors.Is(ctx.Err(), context.Canceled):
			return nil, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if len(replies) == 0 && !silenceOK {
				return nil, &NoNodesError{URL: c.url()}
			}
			return replies, nil
		default:
			return nil, fmt.Errorf("collect replies to %s: %w", subj, err)
		}
	}
}

// adaptiveStall scales the stall window to how far away the nodes are: a
// first reply after rtt means the others are most likely a few rtts behind.
// On loopback that ends a listing within tens of milliseconds; across a WAN
// it waits longer. max bounds it (the configured stall).
func adaptiveStall(rtt, max time.Duration) time.Duration {
	return min(max, 4*rtt+MinStall)
}

// decodeAll opens every reply envelope and sorts the results by key. A reply
// that does not decode (a node refusing, or a stranger on the subject) is
// skipped unless nothing decodes.
func decodeAll[T any](replies [][]byte, key func(T) string) ([]T, error) {
	out := make([]T, 0, len(replies))
	var errs []error
	for _, b := range replies {
		var v T
		if err := api.DecodeEnvelope(b, &v); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, v)
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	slices.SortFunc(out, func(a, b T) int { return strings.Compare(key(a), key(b)) })
	return out, nil
}
