package natsd

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ControlPlane is an embedded control-plane server: JetStream on, storage
// under a directory, a loopback leaf-node port so node workload accounts can
// link to it.
type ControlPlane struct {
	srv  *server.Server
	opts *server.Options // the server writes chosen random ports back here
}

// ControlPlaneOptions configures StartControlPlane.
type ControlPlaneOptions struct {
	Host     string // default 127.0.0.1
	Port     int    // 0 → 4222; -1 → random
	LeafPort int    // 0 → random
	StoreDir string // JetStream storage; required
}

// StartControlPlane starts the server and waits until it accepts clients.
func StartControlPlane(o ControlPlaneOptions) (*ControlPlane, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("embedded nats: store dir is empty")
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = 4222
	}
	leafPort := o.LeafPort
	if leafPort == 0 {
		leafPort = -1
	}
	opts := &server.Options{
		ServerName: "nex-embedded",
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   filepath.Join(o.StoreDir, "jetstream"),
		NoSigs:     true,
		NoLog:      true,
		MaxPayload: 8 << 20,
		LeafNode:   server.LeafNodeOpts{Host: host, Port: leafPort},
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s: not ready after 10s", net.JoinHostPort(host, strconv.Itoa(port)))
	}
	return &ControlPlane{srv: s, opts: opts}, nil
}

// ClientURL is the URL clients connect to.
func (c *ControlPlane) ClientURL() string { return c.srv.ClientURL() }

// LeafURL is the loopback leaf-node URL.
func (c *ControlPlane) LeafURL() string {
	o := c.opts
	return fmt.Sprintf("nats-leaf://%s", net.JoinHostPort(o.LeafNode.Host, strconv.Itoa(o.LeafNode.Port)))
}

// Server exposes the underlying server (tests, in-process connections).
func (c *ControlPlane) Server() *server.Server { return c.srv }

// Shutdown stops the server and waits for it.
func (c *ControlPlane) Shutdown() {
	c.srv.Shutdown()
	c.srv.WaitForShutdown()
}

func parseURL(s string) (*url.URL, error) { return url.Parse(s) }
