package cli

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// DefaultURL is where commands look for NATS when none is given.
const DefaultURL = nats.DefaultURL

// URL is the server the command talks to.
func (g *Globals) URL() string {
	if g.Server != "" {
		return g.Server
	}
	return DefaultURL
}

// NATSOptions turns the global connection flags into nats.go options.
func (g *Globals) NATSOptions(name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name), nats.Timeout(g.Timeout.D()),
		// Without a handler nats.go prints its asynchronous errors raw; a
		// slow consumer is reported by the watch that dropped (controlclient).
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if !errors.Is(err, nats.ErrSlowConsumer) {
				fmt.Fprintf(g.Stderr(), "nex: %v\n", err)
			}
		}),
	}
	if g.Creds != "" {
		opts = append(opts, nats.UserCredentials(g.Creds))
	}
	if g.Nkey != "" {
		o, err := nats.NkeyOptionFromSeed(g.Nkey)
		if err != nil {
			return nil, fmt.Errorf("nkey %s: %w", g.Nkey, err)
		}
		opts = append(opts, o)
	}
	switch {
	case g.User != "" && g.Password != "":
		opts = append(opts, nats.UserInfo(g.User, g.Password))
	case g.User != "":
		opts = append(opts, nats.Token(g.User))
	}
	if g.TLSCert != "" || g.TLSKey != "" {
		opts = append(opts, nats.ClientCert(g.TLSCert, g.TLSKey))
	}
	if g.TLSCA != "" {
		opts = append(opts, nats.RootCAs(g.TLSCA))
	}
	return opts, nil
}

// Connect opens a NATS connection for a client command. A failure names the
// URL, since "no servers available" alone does not tell the user where we looked.
func (g *Globals) Connect(name string, extra ...nats.Option) (*nats.Conn, error) {
	opts, err := g.NATSOptions(name)
	if err != nil {
		return nil, err
	}
	nc, err := nats.Connect(g.URL(), append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURL(g.URL()), err)
	}
	return nc, nil
}

// redactURL hides passwords in URLs before they reach logs or errors.
func redactURL(u string) string {
	var out []string
	for _, s := range strings.Split(u, ",") {
		if at := strings.LastIndex(s, "@"); at > 0 {
			if i := strings.Index(s, "://"); i >= 0 && i < at {
				s = s[:i+3] + "***@" + s[at+1:]
			}
		}
		out = append(out, s)
	}
	return strings.Join(out, ",")
}
