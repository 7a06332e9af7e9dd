package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/node"
	"github.com/nex-engine/nex/internal/node/config"
)

// NodeUpCmd runs a node until SIGINT/SIGTERM.
type NodeUpCmd struct {
	Config   string `name:"config" help:"node configuration file (JSON)" type:"path"`
	NodeSeed string `name:"node-seed" help:"file with the node's nkey seed; created if missing, so a restarted node keeps its id" type:"path"`
	XKeySeed string `name:"xkey-seed" help:"file with the node's xkey seed; created if missing" type:"path"`
	DataDir  string `name:"data-dir" help:"override data_dir of the config" type:"path"`
	Sandbox  string `name:"sandbox" help:"override sandbox of the config (auto, process, qemu, firecracker)"`
	PoolSize *int   `name:"pool-size" help:"override machine_pool_size of the config"`
}

func (c *NodeUpCmd) loadConfig() (*config.Config, error) {
	cfg, err := config.Load(c.Config)
	if err != nil {
		return nil, err
	}
	changed := false
	if c.DataDir != "" {
		if cfg.StateDir == filepath.Join(cfg.DataDir, "state") {
			cfg.StateDir = filepath.Join(c.DataDir, "state")
		}
		cfg.DataDir, changed = c.DataDir, true
	}
	if c.Sandbox != "" {
		cfg.Sandbox, changed = c.Sandbox, true
	}
	if c.PoolSize != nil {
		cfg.MachinePoolSize, changed = c.PoolSize, true
	}
	if changed {
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
	}
	return cfg, nil
}

func (c *NodeUpCmd) Run(g *Globals, ctx context.Context) error {
	log := g.Log()
	cfg, err := c.loadConfig()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}

	nc, embedded, err := c.connectControlPlane(g, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		nc.Close()
		if embedded != nil {
			embedded.Shutdown()
		}
	}()
	log.Info("Established node NATS connection", "url", redactURL(nc.ConnectedUrlRedacted()))
	if c.Config != "" {
		log.Info("Loaded node configuration", "path", c.Config)
	} else {
		log.Info("Loaded node configuration", "path", "(defaults)")
	}

	id, err := node.NewIdentity(c.NodeSeed, c.XKeySeed)
	if err != nil {
		return err
	}
	driver, err := node.NewDriver(ctx, cfg, log)
	if err != nil {
		return err
	}

	var leaf *url.URL
	switch {
	case embedded != nil:
		leaf, _ = url.Parse(embedded.LeafURL())
	case cfg.WorkloadLeafURL != "":
		if leaf, err = url.Parse(cfg.WorkloadLeafURL); err != nil {
			return fmt.Errorf("workload_leaf_url: %w", err)
		}
	default:
		leaf = probeLeaf(nc, log)
	}

	n, err := node.New(node.Options{Config: cfg, Identity: id, Control: nc, Driver: driver, LeafURL: leaf,
		Version: Version, Log: log})
	if err != nil {
		return err
	}
	if err := n.Start(); err != nil {
		return err
	}

	<-ctx.Done()
	log.Info("stopping node (signal again to force)")
	force := make(chan os.Signal, 1)
	signal.Notify(force, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(force)
	go func() {
		<-force
		log.Error("second signal: exiting now")
		os.Exit(1)
	}()
	sctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return n.Stop(sctx)
}

// connectControlPlane connects to the configured NATS. When the user named
// no server and nothing answers at the default URL, it starts an embedded
// server there; an explicit server never falls back.
func (c *NodeUpCmd) connectControlPlane(g *Globals, cfg *config.Config, log *slog.Logger) (*nats.Conn, *natsd.ControlPlane, error) {
	opts, err := g.NATSOptions("nex-node")
	if err != nil {
		return nil, nil, err
	}
	opts = append(opts,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("control-plane NATS disconnected", "error", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("control-plane NATS reconnected", "url", nc.ConnectedUrlRedacted())
		}),
	)
	if g.Server != "" {
		nc, err := nats.Connect(g.Server, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("cannot reach NATS at %s: %w (an explicit --server/NATS_URL never falls back to an embedded server)", redactURL(g.Server), err)
		}
		return nc, nil, nil
	}
	probe := append(append([]nats.Option{}, opts...), nats.Timeout(time.Second), nats.NoReconnect())
	if nc, err := nats.Connect(DefaultURL, probe...); err == nil {
		nc.Close()
		nc, err := nats.Connect(DefaultURL, opts...)
		return nc, nil, err
	} else if !errors.Is(err, nats.ErrNoServers) {
		return nil, nil, fmt.Errorf("NATS at %s: %w", DefaultURL, err)
	}
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{StoreDir: filepath.Join(cfg.DataDir, "controlplane")})
	if err != nil {
		return nil, nil, fmt.Errorf("no NATS at %s and the embedded server could not start: %w", DefaultURL, err)
	}
	log.Info("No NATS server at "+DefaultURL+"; started an embedded one (JetStream on)",
		"client_url", cp.ClientURL(), "leaf_url", cp.LeafURL(), "store", filepath.Join(cfg.DataDir, "controlplane"))
	nc, err := nats.Connect(cp.ClientURL(), opts...)
	if err != nil {
		cp.Shutdown()
		return nil, nil, err
	}
	return nc, cp, nil
}

// probeLeaf is the fallback when the control plane is external and no
// workload_leaf_url is configured: NATS's default leaf-node port on the
// control plane's host, if something listens there.
func probeLeaf(nc *nats.Conn, log *slog.Logger) *url.URL {
	u, err := url.Parse(nc.ConnectedUrl())
	if err != nil {
		return nil
	}
	addr := net.JoinHostPort(u.Hostname(), "7422")
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		log.Warn("no workload_leaf_url configured and no leaf-node port at " + addr +
			"; workloads get the node's internal NATS only and their services are not reachable from the control plane")
		return nil
	}
	c.Close()
	log.Info("no workload_leaf_url configured; linking workloads to the control plane's default leaf-node port", "leaf_url", "nats-leaf://"+addr)
	return &url.URL{Scheme: "nats-leaf", Host: addr}
}
