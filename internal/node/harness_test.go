package node

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

var (
	binOnce             sync.Once
	nexBin, workloadBin string
)

// binaries builds nex (the agent) and the test workload once per run.
func binaries(t testing.TB) (string, string) {
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "nex-node-test")
		if err != nil {
			t.Fatal(err)
		}
		sub := &keepDirT{TB: t, dir: dir}
		nexBin = sandboxtest.BuildNex(sub)
		workloadBin = sandboxtest.BuildWorkload(sub)
	})
	if nexBin == "" || workloadBin == "" {
		t.Fatal("test binaries could not be built")
	}
	return nexBin, workloadBin
}

// keepDirT hands out one directory that outlives the first test, so the
// binaries built once serve every test of the package.
type keepDirT struct {
	testing.TB
	dir string
	n   int
}

func (k *keepDirT) TempDir() string {
	k.n++
	d := filepath.Join(k.dir, strings.Repeat("d", k.n))
	_ = os.MkdirAll(d, 0o755)
	return d
}

type harness struct {
	t      testing.TB
	cp     *natsd.ControlPlane
	nc     *nats.Conn
	client *controlclient.Client
	node   *Node
	cfg    *config.Config
	issuer nkeys.KeyPair
	sender nkeys.KeyPair
}

func quietLog() *slog.Logger {
	if os.Getenv("NEX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// driverOf is what a harness's driver constructor returns.
type driverOf = sandbox.Driver

func newHarness(t testing.TB, mutate func(*config.Config)) *harness {
	t.Helper()
	nex, _ := binaries(t)
	return newHarnessWithDriver(t, mutate, func(*config.Config) (driverOf, error) {
		return process.New(process.Config{AgentBinary: nex, Log: quietLog()})
	})
}

// newHarnessWithDriver starts a node on its own embedded control plane with
// the driver newDriver makes from the final config.
func newHarnessWithDriver(t testing.TB, mutate func(*config.Config), newDriver func(*config.Config) (driverOf, error)) *harness {
	t.Helper()
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Shutdown)
	nc, err := nats.Connect(cp.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)

	pool := 1
	cfg := &config.Config{DataDir: t.TempDir(), Sandbox: config.SandboxProcess, MachinePoolSize: &pool,
		HandshakeTimeout: config.Duration(20 * time.Second), AgentPingInterval: config.Duration(500 * time.Millisecond)}
	cfg.ApplyDefaults()
	if mutate != nil {
		mutate(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity("", "")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := newDriver(cfg)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := urlParse(cp.LeafURL())
	n, err := New(Options{Config: cfg, Identity: id, Control: nc, Driver: drv, LeafURL: leaf, Version: "test", Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = n.Stop(ctx)
	})
	issuer, _ := nkeys.CreateAccount()
	sender, _ := nkeys.CreateCurveKeys()
	return &harness{t: t, cp: cp, nc: nc, client: controlclient.New(nc), node: n, cfg: cfg, issuer: issuer, sender: sender}
}

func (h *harness) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	h.t.Cleanup(cancel)
	return ctx
}

// upload puts the test workload into NEXCLIFILES and returns its hash.
func (h *harness) upload(key string, data []byte) string {
	h.t.Helper()
	up, err := h.client.Upload(h.ctx(), "NEXCLIFILES", key, strings.NewReader(string(data)), int64(len(data)), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return up.Hash
}

// deployRequest is a valid request for the test workload; tests spoil it.
func (h *harness) deployRequest(name, key, hash string, env map[string]string, argv ...string) api.DeployRequest {
	h.t.Helper()
	tok, err := controlclient.WorkloadJWT(h.issuer, name, hash)
	if err != nil {
		h.t.Fatal(err)
	}
	sealed, err := controlclient.SealEnvironment(h.sender, h.node.o.Identity.PublicXKey(), env)
	if err != nil {
		h.t.Fatal(err)
	}
	loc, _ := controlclient.NATSLocation("NEXCLIFILES", key)
	senderPub, _ := h.sender.PublicKey()
	target := h.node.ID()
	return api.DeployRequest{Argv: argv, WorkloadType: api.WorkloadNative, Location: loc, WorkloadJWT: &tok,
		EncryptedEnvironment: &sealed, SenderPublicKey: &senderPub, TargetNode: &target}
}

func (h *harness) deploy(req api.DeployRequest) (*api.RunResponse, error) {
	return h.client.Deploy(h.ctx(), api.DefaultNamespace, h.node.ID(), req)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s", d, what)
}

// sandboxDirs lists the sandbox directories under the state dir.
// workload is the node's record of the workload id (nil when none).
func (h *harness) workload(id string) *workload {
	h.node.mu.Lock()
	defer h.node.mu.Unlock()
	return h.node.workloads[id]
}

func (h *harness) sandboxDirs() []string {
	entries, _ := os.ReadDir(filepath.Join(h.cfg.StateDir, "sandboxes"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// partials lists half-written artifact downloads.
func (h *harness) partials() []string {
	out, _ := filepath.Glob(filepath.Join(h.node.artifactDir(), "*.part"))
	return out
}
