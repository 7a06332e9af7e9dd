package natsd

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/agentapi"
)

func startInternal(t *testing.T, o InternalOptions) *Internal {
	t.Helper()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	in, err := StartInternal(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(in.Shutdown)
	return in
}

func connectAgent(t *testing.T, url, id, seed string) (*nats.Conn, chan error) {
	t.Helper()
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	errs := make(chan error, 10)
	nc, err := nats.Connect(url, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(agentapi.InboxPrefix(id)),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
	if err != nil {
		return nil, errs
	}
	t.Cleanup(nc.Close)
	return nc, errs
}

func TestAgentUserIsScopedToItsSandbox(t *testing.T) {
	in := startInternal(t, InternalOptions{})
	node, err := in.ConnectNode("node")
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	_, err = node.Subscribe(agentapi.HandshakeSubject("sb1"), func(m *nats.Msg) { _ = m.Respond([]byte("ok")) })
	if err != nil {
		t.Fatal(err)
	}
	_ = node.Flush()

	seed, err := in.AddAgent("sb1")
	if err != nil {
		t.Fatal(err)
	}
	nc, errs := connectAgent(t, in.ClientURL(), "sb1", seed)
	if nc == nil {
		t.Fatal("agent could not connect")
	}
	reply, err := nc.Request(agentapi.HandshakeSubject("sb1"), nil, 2*time.Second)
	if err != nil || string(reply.Data) != "ok" {
		t.Fatalf("handshake request: %v %v", reply, err)
	}
	// Another sandbox's subjects are refused.
	if _, err := nc.Subscribe(agentapi.DeploySubject("sb2"), func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
			t.Fatalf("unexpected error %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("subscribe to another sandbox's subject was not refused")
	}

	// A removed agent is disconnected and cannot come back.
	in.RemoveAgent("sb1")
	deadline := time.Now().Add(5 * time.Second)
	for !nc.IsClosed() && nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if nc.IsConnected() {
		t.Fatal("removed agent still connected")
	}
	if c, _ := connectAgent(t, in.ClientURL(), "sb1", seed); c != nil {
		t.Fatal("removed agent reconnected")
	}
}

func TestUnknownNkeyRefused(t *testing.T) {
	in := startInternal(t, InternalOptions{})
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	if nc, _ := connectAgent(t, in.ClientURL(), "x", string(seed)); nc != nil {
		t.Fatal("unknown nkey accepted")
	}
}

func TestWorkloadServiceReachesControlPlaneThroughLeaf(t *testing.T) {
	cp, err := StartControlPlane(ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Shutdown()
	leaf, _ := parseURL(cp.LeafURL())
	in := startInternal(t, InternalOptions{LeafURL: leaf, Domain: "nexnode"})

	user, pass := in.AddWorkloadUser("w1")
	wl, err := nats.Connect(in.ClientURL(), nats.UserInfo(user, pass))
	if err != nil {
		t.Fatal(err)
	}
	defer wl.Close()
	if _, err := wl.Subscribe("svc.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	_ = wl.Flush()

	client, err := nats.Connect(cp.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	var reply *nats.Msg
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if reply, err = client.Request("svc.echo", []byte("hi"), 200*time.Millisecond); err == nil {
			break
		}
	}
	if err != nil || string(reply.Data) != "hi" {
		t.Fatalf("echo through leaf: %v", err)
	}

	// The workload may not listen on control subjects.
	errs := make(chan error, 1)
	wl.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err })
	_, _ = wl.Subscribe("$NEX.PING", func(*nats.Msg) {})
	select {
	case <-errs:
	case <-time.After(5 * time.Second):
		t.Fatal("workload subscribe to $NEX.PING not refused")
	}
	// A wrong password is refused.
	if nc, err := nats.Connect(in.ClientURL(), nats.UserInfo(user, "nope")); err == nil {
		nc.Close()
		t.Fatal("wrong password accepted")
	}
}
