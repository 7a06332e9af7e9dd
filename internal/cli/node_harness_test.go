package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/node"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox/process"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// testVersion is the version the test nodes report.
const testVersion = "0.0.0-test"

// plane is an embedded control plane (JetStream on, port -1) that the
// commands under test and the nodes they drive share, with a connection of
// the test's own.
type plane struct {
	t   *testing.T
	cp  *natsd.ControlPlane
	url string
	nc  *nats.Conn
}

func startPlane(t *testing.T) *plane {
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
	return &plane{t: t, cp: cp, url: cp.ClientURL(), nc: nc}
}

// ccServer starts a control plane with no node and returns its URL.
func ccServer(t *testing.T) string {
	t.Helper()
	return startPlane(t).url
}

// nodeOption adjusts a test node's config.
type nodeOption func(*config.Config)

func withTags(tags map[string]string) nodeOption {
	return func(c *config.Config) { c.Tags = tags }
}

func withHeartbeat(d time.Duration) nodeOption {
	return func(c *config.Config) { c.HeartbeatInterval = config.Duration(d) }
}

// startNode starts a real node on the plane, in-process: process sandboxes
// running the nex binary built from this module as their agent, a warm pool
// of one, its data in t.TempDir() and workloads leaf-linked to the plane. It
// returns once the node answers and its pool is ready, and stops it (and so
// every workload) when the test ends.
func (p *plane) startNode(opts ...nodeOption) *node.Node {
	t := p.t
	t.Helper()
	nc, err := nats.Connect(p.url, nats.Name("nex-node"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	pool := 1
	cfg := &config.Config{DataDir: t.TempDir(), Sandbox: config.SandboxProcess, MachinePoolSize: &pool}
	for _, o := range opts {
		o(cfg)
	}
	cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	id, err := node.NewIdentity("", "")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := process.New(process.Config{AgentBinary: sandboxtest.BuildNex(t), Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := url.Parse(p.cp.LeafURL())
	if err != nil {
		t.Fatal(err)
	}
	n, err := node.New(node.Options{Config: cfg, Identity: id, Control: nc, Driver: drv, LeafURL: leaf,
		Version: testVersion, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := n.Stop(ctx); err != nil {
			t.Errorf("stop node: %v", err)
		}
	})
	// A ready pool makes `node info` output exact and the first deploy quick.
	eventually(t, "the warm pool of node "+n.ID()+" to fill", func() bool {
		pl := n.Info(api.DefaultNamespace).Pool
		return pl != nil && pl.Ready >= pl.Target
	})
	return n
}

// testLog discards node logs unless NEX_TEST_LOG is set.
func testLog() *slog.Logger {
	if os.Getenv("NEX_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// devHome points HOME at a fresh directory, so ~/.nex keys are made there
// and never in the real home.
func devHome(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	return home
}

// ccRun runs the CLI and returns exit code, stdout and stderr.
func ccRun(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// run runs the CLI against the plane.
func (p *plane) run(args ...string) (int, string, string) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return ccRun(p.t, ctx, slices.Concat(args, []string{"-s", p.url})...)
}

// mustRun runs the CLI against the plane and fails the test unless it
// succeeds; it returns stdout and stderr.
func (p *plane) mustRun(args ...string) (string, string) {
	p.t.Helper()
	code, out, errOut := p.run(args...)
	if code != 0 {
		p.t.Fatalf("nex %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out, errOut
}

// deploy runs a devrun or run with --json and returns its result.
func (p *plane) deploy(args ...string) deployResult {
	p.t.Helper()
	out, _ := p.mustRun(append(slices.Clone(args), "--json")...)
	var res deployResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || !res.Started || res.ID == "" {
		p.t.Fatalf("nex %s: result %q (%v)", strings.Join(args, " "), out, err)
	}
	return res
}

// waitEcho polls until a workload in echo mode answers on subject over the
// control plane (its subscription reaches the plane over the leaf link a
// moment after it starts).
func (p *plane) waitEcho(subject string) {
	p.t.Helper()
	eventually(p.t, "an answer on "+subject, func() bool {
		m, err := p.nc.Request(subject, []byte("ping"), 500*time.Millisecond)
		return err == nil && string(m.Data) == "echo: ping"
	})
}

// subscribed reports whether a connection called name has every one of
// subjects subscribed on the plane's server.
func (p *plane) subscribed(name string, subjects []string) bool {
	cz, err := p.cp.Server().Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		return false
	}
	for _, c := range cz.Conns {
		if c.Name != name {
			continue
		}
		all := true
		for _, s := range subjects {
			all = all && slices.Contains(c.Subs, s)
		}
		if all {
			return true
		}
	}
	return false
}

// follower is a following command (logs, events) running in the
// background.
type follower struct {
	t           *testing.T
	args        []string
	ctx         context.Context
	cancel      context.CancelFunc
	out, errOut syncBuffer
	done        chan struct{}
	code        int
}

// follow starts a following command against the plane. When subjects are
// given, it returns once the command has subscribed to all of them, so
// whatever happens afterwards reaches it.
func (p *plane) follow(subjects []string, args ...string) *follower {
	t := p.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	f := &follower{t: t, args: args, ctx: ctx, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		f.code = Main(ctx, slices.Concat(args, []string{"-s", p.url}), &f.out, &f.errOut)
	}()
	t.Cleanup(func() {
		cancel()
		<-f.done
	})
	if len(subjects) > 0 {
		eventually(t, "nex "+args[0]+" to subscribe to "+strings.Join(subjects, ", "), func() bool {
			if f.ended() {
				t.Fatalf("nex %s ended early: exit %d, %s", strings.Join(args, " "), f.code, f.errOut.String())
			}
			return p.subscribed("nex "+args[0], subjects)
		})
	}
	return f
}

func (f *follower) ended() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// waitFor polls the command's output until it holds every one of want, and
// returns the output.
func (f *follower) waitFor(want ...string) string {
	f.t.Helper()
	missing := func() string {
		out := f.out.String()
		for _, w := range want {
			if !strings.Contains(out, w) {
				return w
			}
		}
		return ""
	}
	if !poll(func() bool { return missing() == "" || f.ended() }) || missing() != "" {
		f.t.Fatalf("nex %s (ended: %v, exit %d) did not print %q:\n%s\nstderr: %s",
			strings.Join(f.args, " "), f.ended(), f.code, missing(), f.out.String(), f.errOut.String())
	}
	return f.out.String()
}

// waitUntil polls the command's output until cond holds for it.
func (f *follower) waitUntil(what string, cond func(out string) bool) {
	f.t.Helper()
	eventually(f.t, what, func() bool { return cond(f.out.String()) })
}

// stop interrupts the command as ^C would and returns what it did.
func (f *follower) stop() (int, string, string) {
	f.cancel()
	<-f.done
	return f.code, f.out.String(), f.errOut.String()
}

// wait waits for the command to end by itself (--count).
func (f *follower) wait() (int, string, string) {
	f.t.Helper()
	<-f.done
	if f.ctx.Err() != nil {
		f.t.Fatalf("nex %s did not end by itself:\n%s", strings.Join(f.args, " "), f.out.String())
	}
	return f.code, f.out.String(), f.errOut.String()
}

// syncBuffer is a buffer the command writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// pollBound bounds every wait of these tests, generously for a loaded
// machine.
const pollBound = 30 * time.Second

// poll calls cond until it holds or pollBound passes, and reports whether
// it held.
func poll(cond func() bool) bool {
	deadline := time.Now().Add(pollBound)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}

// eventually polls cond until it holds, failing the test after pollBound.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !poll(cond) {
		t.Fatalf("timed out after %s waiting for %s", pollBound, what)
	}
}

// workloadFile copies the test workload (sandboxtest's: modes exit <code>,
// echo <subject>, ignore-term) to name in a fresh directory, so devrun
// derives the workload name from the file name.
func workloadFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(sandboxtest.BuildWorkload(t))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
