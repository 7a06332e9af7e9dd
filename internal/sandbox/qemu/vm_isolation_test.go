package qemu

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// startReady starts a sandbox for a new agent of h and waits for its
// handshake; the sandbox is stopped when the test ends. mod changes its
// spec.
func startReady(t *testing.T, ctx context.Context, d *Driver, a *sandboxtest.Agent, mod ...func(*sandbox.Spec)) sandbox.Sandbox {
	t.Helper()
	spec := a.Spec(t.TempDir())
	for _, m := range mod {
		m(&spec)
	}
	sb, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sb.Stop(context.Background())
		if t.Failed() {
			if b, err := os.ReadFile(filepath.Join(spec.Dir, consoleFile)); err == nil {
				t.Logf("console of %s:\n%s", spec.ID, b)
			}
		}
	})
	a.Watch(sb)
	if _, err := a.WaitHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	return sb
}

// TestGuestIsolation deploys a probe into a VM: from inside, the node's NATS
// is reachable through PID 1's 127.0.0.1:4222 (and the NATS port behind
// it) and nothing else is: the guest has no network device, so not a host
// service on loopback, not the host's NATS port by the address user-mode
// networking would give it, not a DNS server, not the outside world, nor
// the old guestfwd address.
func TestGuestIsolation(t *testing.T) {
	requireVM(t)
	inColdAndCloned(t, vmSetup(t), testIsolation)
}

// inColdAndCloned runs test on a driver that boots cold and on one that
// restores snapshot clones.
func inColdAndCloned(t *testing.T, a vmAssets, test func(*testing.T, *Driver)) {
	for _, mode := range []string{"cold", "clone"} {
		t.Run(mode, func(t *testing.T) {
			snaps := t.TempDir()
			test(t, a.driver(t, func(c *Config) { c.Snapshot, c.SnapshotDir = mode == "clone", snaps }))
		})
	}
}

func testIsolation(t *testing.T, d *Driver) {
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()

	// A host service on loopback that the guest must not reach.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted sync.WaitGroup
	var reached []string
	var mu sync.Mutex
	accepted.Add(1)
	go func() {
		defer accepted.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			reached = append(reached, c.RemoteAddr().String())
			mu.Unlock()
			fmt.Fprintln(c, "HOST-SECRET")
			c.Close()
		}
	}()
	_, hostPort, _ := net.SplitHostPort(ln.Addr().String())

	h := sandboxtest.NewHarness(t)
	u, _ := url.Parse(h.Server.ClientURL())
	natsPort := u.Port()

	ag := h.AddAgent("iso" + strings.ReplaceAll(t.Name(), "/", ""))
	sb := startReady(t, ctx, d, ag)

	probe, err := os.ReadFile(netprobe(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"tcp/" + agentapi.GuestNATSAddr:    "closed",    // the guestfwd address of old: no network
		"tcp/" + agentapi.WorkloadNATSAddr: "open INFO", // the node's NATS, through PID 1's forwarder
		"tcp/10.0.2.2:" + hostPort:         "closed",    // a host service on loopback
		"tcp/10.0.2.2:" + natsPort:         "closed",    // the node's NATS, not via the forward
		"tcp/10.0.2.2:22":                  "closed",
		"tcp/10.0.2.3:53":                  "closed", // slirp's DNS
		"udp/10.0.2.3:53":                  "closed",
		"tcp/1.1.1.1:443":                  "closed", // the outside world
	}
	var argv []string
	for target := range want {
		argv = append(argv, target)
	}
	// The agent's rehearsal went through PID 1's forwarder to the node's
	// NATS too (vminit.rehearseForward): count the probe's connections
	// after it.
	waitConsole(t, ctx, sb.(*vm), "rehearsed a deploy")
	before := sb.(*vm).portConns.Load()
	if before < 2 {
		t.Errorf("%d connections over the NATS port before the deploy; want the agent's and its rehearsal's", before)
	}
	r, err := ag.Deploy(ctx, agentapi.Deploy{WorkloadID: "probe", Name: "netprobe", Namespace: "default",
		Type: "native", Argv: argv}, probe)
	if err != nil || !r.OK {
		t.Fatalf("deploy probe: %+v, %v", r, err)
	}
	if err := ag.WaitLog(ctx, "stdout", "probes done"); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, l := range ag.Logs() {
		if rest, ok := strings.CutPrefix(l.Text, "probe "); ok && l.Stream == "stdout" {
			target, result, _ := strings.Cut(rest, " ")
			got[target] = result
		}
	}
	for target, w := range want {
		if !strings.HasPrefix(got[target], w) {
			t.Errorf("from the guest, %s: %q; want %s", target, got[target], w)
		}
	}
	// The probe's connection to 127.0.0.1:4222 came over the NATS port,
	// as the agent's did.
	if n := sb.(*vm).portConns.Load(); n <= before {
		t.Errorf("%d connections over the NATS port, %d before the probe; want the probe's too", n, before)
	}
	ln.Close()
	accepted.Wait()
	if len(reached) > 0 {
		t.Errorf("the guest reached a host service on loopback from %v", reached)
	}
	t.Logf("probes: %v", got)
}

// netprobe builds the isolation test's workload once.
func netprobe(t *testing.T) string {
	t.Helper()
	return sandboxtest.BuildPackage(t, "netprobe", "./internal/sandbox/qemu/testdata/netprobe")
}

// TestClonesGetOwnIdentity restores two clones of one template: each
// handshakes as itself (its agent connected with its own nkey, which the
// internal server checks against its sandbox id) from an inbox of its own,
// with the host's clock rather than the template's, its workloads read
// randomness no other clone reads, and neither wrote anything into the
// shared RAM file, which holds no credentials. The template's agent had
// started (and seeded whatever it seeds at start-up) before it was saved.
func TestClonesGetOwnIdentity(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	d := a.driver(t, func(c *Config) { c.Snapshot, c.SnapshotDir = true, t.TempDir() })
	shape := Shape{VCPU: 1, MemoryMiB: 128}
	if err := d.Prepare(ctx, shape); err != nil {
		t.Fatal(err)
	}
	tmpl, err := d.template(ctx, d.shapeOf(sandbox.Spec{VCPU: shape.VCPU, MemoryMiB: shape.MemoryMiB}))
	if err != nil {
		t.Fatal(err)
	}
	ramBefore := fileSum(t, tmpl.ram)

	// Let the template's clock fall behind, so a clone that kept it would
	// handshake with a start time before the clone was started.
	<-time.After(1500 * time.Millisecond)

	h := sandboxtest.NewHarness(t)
	agents := []*sandboxtest.Agent{h.AddAgent("clonea"), h.AddAgent("cloneb")}
	// The node's view of where each clone wants its handshake answered.
	var mu sync.Mutex
	replyTo := map[string]string{}
	for _, ag := range agents {
		sub, err := h.Node.Subscribe(agentapi.HandshakeSubject(ag.ID), func(m *nats.Msg) {
			mu.Lock()
			defer mu.Unlock()
			if replyTo[ag.ID] == "" {
				replyTo[ag.ID] = m.Reply
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := h.Node.Flush(); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	var wg sync.WaitGroup
	for _, ag := range agents {
		wg.Go(func() { startReady(t, ctx, d, ag) })
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for _, ag := range agents {
		hs := ag.Handshakes()[0]
		if hs.SandboxID != ag.ID {
			t.Errorf("clone for %s handshook as %s", ag.ID, hs.SandboxID)
		}
		if hs.StartedAt.Before(started) {
			t.Errorf("clone %s started at %s by its clock, before it was started (%s): the template's clock was kept",
				ag.ID, hs.StartedAt.Format(time.RFC3339Nano), started.Format(time.RFC3339Nano))
		}
	}
	// The harness answered each handshake on its own subscription; this
	// one's copy of the message may be dispatched a moment later.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		seen := len(replyTo)
		mu.Unlock()
		if seen == len(agents) || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	if a, b := replyTo["clonea"], replyTo["cloneb"]; a == b ||
		!strings.HasPrefix(a, agentapi.InboxPrefix("clonea")+".") || !strings.HasPrefix(b, agentapi.InboxPrefix("cloneb")+".") {
		t.Errorf("handshake inboxes %q and %q: want one of each clone's own", a, b)
	}
	mu.Unlock()

	probe, err := os.ReadFile(netprobe(t))
	if err != nil {
		t.Fatal(err)
	}
	random := map[string]string{}
	for _, ag := range agents {
		r, err := ag.Deploy(ctx, agentapi.Deploy{WorkloadID: "rand", Name: "netprobe", Namespace: "default",
			Type: "native", Argv: []string{"rand/"}}, probe)
		if err != nil || !r.OK {
			t.Fatalf("deploy probe in %s: %+v, %v", ag.ID, r, err)
		}
		if err := ag.WaitLog(ctx, "stdout", "probes done"); err != nil {
			t.Fatal(err)
		}
		for _, l := range ag.Logs() {
			if v, ok := strings.CutPrefix(l.Text, "probe rand/ "); ok && l.Stream == "stdout" {
				random[ag.ID] = v
			}
		}
	}
	t.Logf("handshake inboxes %v; crypto/rand %v", replyTo, random)
	if a, b := random["clonea"], random["cloneb"]; len(a) != 32 || a == b {
		t.Errorf("crypto/rand in the clones' workloads: %q and %q; want 16 bytes each, different", a, b)
	}

	if after := fileSum(t, tmpl.ram); after != ramBefore {
		t.Errorf("the template's RAM file changed while clones ran")
	}
	ram, err := os.ReadFile(tmpl.ram)
	if err != nil {
		t.Fatal(err)
	}
	for _, ag := range agents {
		if strings.Contains(string(ram), ag.Meta.Seed) {
			t.Errorf("the template's RAM holds the seed of %s", ag.ID)
		}
	}
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}
