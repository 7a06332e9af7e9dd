package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/agentapi"
)

// WarmUp runs once what an agent runs from the moment it has its identity
// until its handshake is answered (connect with an nkey, subscribe, the
// handshake request and its reply), against a NATS peer that WarmUp plays
// itself on an in-memory pipe, under a throwaway identity. A snapshot
// template calls it before it is saved: what that code builds on first use
// (encoding/json's codecs of nats.go's INFO and CONNECT and of the
// handshake, nats.go's parser state, ed25519's base-point table) is memory
// and comes with every clone, which then only has to translate the code
// again (TCG), not also rebuild it.
//
// Nothing it leaves behind is secret or shared across clones in a way that
// matters: the key is made from zeros, and the connection is closed before
// WarmUp returns.
func WarmUp(ctx context.Context) error {
	kp, err := nkeys.FromRawSeed(nkeys.PrefixByteUser, make([]byte, 32))
	if err != nil {
		return err
	}
	seed, err := kp.Seed()
	if err != nil {
		return err
	}
	client, server := net.Pipe()
	served := make(chan error, 1)
	go func() { served <- playServer(server) }()
	a := newAgent(ctx, Options{
		Meta:   agentapi.Metadata{SandboxID: "warm-up", NATSURL: "nats://" + agentapi.GuestNATSAddr, Seed: string(seed)},
		Log:    slog.New(slog.DiscardHandler),
		Dialer: &onceDialer{conn: client},
	})
	// Natively it takes ≈ 3 ms, under TCG ≈ 0.1 s. A peer that stopped
	// answering (a nats.go that speaks differently) must not hold a
	// template's boot for long: the warm-up is optional.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	nc, err := a.connect(ctx)
	if err != nil {
		client.Close()
		return fmt.Errorf("warm-up: %w", err)
	}
	a.nc = nc
	if err = a.subscribe(); err == nil {
		err = a.handshake(ctx)
	}
	a.close()
	<-a.closed
	if serr := <-served; err == nil && serr != nil && !errors.Is(serr, io.EOF) && !errors.Is(serr, io.ErrClosedPipe) {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	return warmDeployCodecs()
}

// warmDeployCodecs builds encoding/json's codecs of what a deploy's path
// decodes and encodes (the deploy, the agent's reply, its event and log
// lines), which a template's agent would otherwise build only at its
// first deploy, in every clone.
func warmDeployCodecs() error {
	var d agentapi.Deploy
	if err := json.Unmarshal([]byte(`{"workload_id":"w","name":"n","argv":["a"],"env":{"K":"v"},"size":1,"unstage":["u"]}`), &d); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	for _, v := range []any{agentapi.Reply{OK: true}, agentapi.Event{Type: agentapi.EventWorkloadStarted}, agentapi.LogLine{Time: time.Now()}} {
		if _, err := json.Marshal(v); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	return nil
}

// onceDialer hands out its connection once; a reconnect finds nothing.
type onceDialer struct{ conn net.Conn }

func (d *onceDialer) Dial(string, string) (net.Conn, error) {
	c := d.conn
	if c == nil {
		return nil, errors.New("warm-up: no second connection")
	}
	d.conn = nil
	return c, nil
}

// playServer is as much of a NATS server as WarmUp needs on conn: INFO with
// a nonce, PONG to PING, and a reply to every request whose reply subject
// matches a subscription (an accepted handshake). It returns when conn ends.
func playServer(conn net.Conn) error {
	defer conn.Close()
	info := `{"server_id":"warm-up","server_name":"warm-up","version":"2.10.0","proto":1,` +
		`"headers":true,"max_payload":1048576,"auth_required":true,"nonce":"warm-up-nonce"}`
	if _, err := io.WriteString(conn, "INFO "+info+"\r\n"); err != nil {
		return err
	}
	reply, err := json.Marshal(agentapi.HandshakeReply{OK: true, Now: time.Now()})
	if err != nil {
		return err
	}
	subs := map[string]string{} // subject → sid
	r := bufio.NewReader(conn)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var out string
		switch strings.ToUpper(f[0]) {
		case "PING":
			out = "PONG\r\n"
		case "SUB":
			if len(f) >= 3 {
				subs[f[1]] = f[len(f)-1]
			}
		case "PUB", "HPUB":
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil || n < 0 {
				return fmt.Errorf("warm-up server: bad %q", strings.TrimSpace(line))
			}
			if _, err := io.CopyN(io.Discard, r, int64(n)+2); err != nil {
				return err
			}
			to := "" // PUB subject [reply] size, HPUB subject [reply] hsize size
			if pub := strings.ToUpper(f[0]) == "PUB"; pub && len(f) == 4 || !pub && len(f) == 5 {
				to = f[2]
			}
			if sid, ok := matchSub(subs, to); ok {
				out = fmt.Sprintf("MSG %s %s %d\r\n%s\r\n", to, sid, len(reply), reply)
			}
		}
		if out != "" {
			if _, err := io.WriteString(conn, out); err != nil {
				return err
			}
		}
	}
}

// matchSub finds the sid of a subscription matching subject: exactly, or
// by a trailing * (nats.go's request inbox).
func matchSub(subs map[string]string, subject string) (string, bool) {
	if subject == "" {
		return "", false
	}
	if sid, ok := subs[subject]; ok {
		return sid, true
	}
	if i := strings.LastIndexByte(subject, '.'); i > 0 {
		sid, ok := subs[subject[:i]+".*"]
		return sid, ok
	}
	return "", false
}
