// Command echoservice is the smallest useful nex workload: a NATS micro
// service "EchoService" whose endpoint on subject svc.echo replies with the
// request body. It connects to $NATS_URL (the node sets it to the
// workload's own NATS user), logs one line when it is ready, and exits
// cleanly on SIGTERM or SIGINT, which is how a node stops it.
//
// Build it static so it runs in every sandbox:
//
//	CGO_ENABLED=0 go build -o echoservice ./examples/echoservice
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// Service identity, as `nats micro ls` shows it.
const (
	ServiceName    = "EchoService"
	ServiceVersion = "1.0.0"
	EchoSubject    = "svc.echo"
	defaultURL     = "nats://127.0.0.1:4222"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	server := os.Getenv("NATS_URL")
	if server == "" {
		server = defaultURL
	}
	if err := run(ctx, server, os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "echoservice:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends. ready, when not nil, is closed once the
// service answers requests.
func run(ctx context.Context, server string, log io.Writer, ready chan<- struct{}) error {
	opts := []nats.Option{nats.Name(ServiceName)}
	if creds := os.Getenv("NATS_CREDS"); creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(server, opts...)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", redact(server), err)
	}
	defer nc.Close()

	svc, err := micro.AddService(nc, micro.Config{
		Name:        ServiceName,
		Version:     ServiceVersion,
		Description: "replies with the request body",
	})
	if err != nil {
		return fmt.Errorf("add service: %w", err)
	}
	err = svc.AddEndpoint("echo", micro.HandlerFunc(func(req micro.Request) {
		_ = req.Respond(req.Data())
	}), micro.WithEndpointSubject(EchoSubject))
	if err != nil {
		return errors.Join(fmt.Errorf("add endpoint: %w", err), svc.Stop())
	}
	// Make sure the server has the subscriptions before saying we are ready.
	if err := nc.Flush(); err != nil {
		return errors.Join(fmt.Errorf("flush: %w", err), svc.Stop())
	}
	fmt.Fprintf(log, "echoservice: %s %s serving %s on %s\n", ServiceName, ServiceVersion, EchoSubject, nc.ConnectedUrlRedacted())
	if ready != nil {
		close(ready)
	}

	<-ctx.Done()
	fmt.Fprintln(log, "echoservice: stopping")
	// Stop drains the endpoint so requests in flight still get their reply.
	if err := svc.Stop(); err != nil {
		return fmt.Errorf("stop service: %w", err)
	}
	return nc.Drain()
}

// redact hides passwords in a (comma-separated) server URL before it
// reaches a log.
func redact(servers string) string {
	parts := strings.Split(servers, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}
