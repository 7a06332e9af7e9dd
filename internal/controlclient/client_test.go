package controlclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/natsd"
)

// startServer runs the embedded control-plane server (JetStream on) on a
// random port and returns a connection to it.
func startServer(t *testing.T) *nats.Conn {
	t.Helper()
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Shutdown)
	return connect(t, cp.ClientURL())
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// answer subscribes a stand-in node handler on its own connection; reply
// returns the envelope body, or nil to stay silent.
func answer(t *testing.T, url, subject string, reply func(*nats.Msg) []byte) {
	t.Helper()
	nc := connect(t, url)
	if _, err := nc.Subscribe(subject, func(m *nats.Msg) {
		if b := reply(m); b != nil {
			_ = m.Respond(b)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func envelope(t *testing.T, typ string, v any) []byte {
	t.Helper()
	b, err := api.NewEnvelope(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPingCollectsEveryNodeSorted(t *testing.T) {
	nc := startServer(t)
	url := nc.ConnectedUrl()
	ids := []string{"NCCC", "NAAA", "NBBB"}
	for _, id := range ids {
		answer(t, url, api.PingSubject(), func(*nats.Msg) []byte {
			return envelope(t, api.TypePingResponse, api.PingResponse{NodeID: id, Version: "test"})
		})
	}
	// Also a subscriber that never answers (an old or wedged node): the
	// collection must still end, after the stall, with the three replies.
	answer(t, url, api.PingSubject(), func(*nats.Msg) []byte { return nil })

	got, err := New(nc).Ping(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var gotIDs []string
	for _, p := range got {
		gotIDs = append(gotIDs, p.NodeID)
	}
	if strings.Join(gotIDs, ",") != "NAAA,NBBB,NCCC" {
		t.Fatalf("Ping = %v, want the three nodes sorted", gotIDs)
	}
}

func TestPingWithoutNodesNamesTheURL(t *testing.T) {
	nc := startServer(t)
	_, err := New(nc).Ping(context.Background())
	if !errors.Is(err, ErrNoNodes) {
		t.Fatalf("err = %v, want ErrNoNodes", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, nc.ConnectedUrlRedacted()) || !strings.Contains(msg, "nex node up") {
		t.Fatalf("error %q should name %s and suggest `nex node up`", msg, nc.ConnectedUrlRedacted())
	}
	if strings.Contains(msg, "no responders") {
		t.Fatalf("error %q leaks the transport's wording", msg)
	}
}

func TestPingWithOnlySilentSubscribersIsNoNodes(t *testing.T) {
	nc := startServer(t)
	answer(t, nc.ConnectedUrl(), api.PingSubject(), func(*nats.Msg) []byte { return nil })
	_, err := New(nc, WithTimeout(200*time.Millisecond)).Ping(context.Background())
	if !errors.Is(err, ErrNoNodes) {
		t.Fatalf("err = %v, want ErrNoNodes", err)
	}
}

func TestPingHonoursCancel(t *testing.T) {
	nc := startServer(t)
	answer(t, nc.ConnectedUrl(), api.PingSubject(), func(*nats.Msg) []byte { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New(nc).Ping(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestAuctionOnlyMatchingNodesBid(t *testing.T) {
	nc := startServer(t)
	url := nc.ConnectedUrl()
	nodes := map[string]map[string]string{
		"NGPU": {"gpu": "yes"},
		"NCPU": {"gpu": "no"},
	}
	for id, tags := range nodes {
		answer(t, url, api.AuctionSubject(), func(m *nats.Msg) []byte {
			var req api.AuctionRequest
			if err := json.Unmarshal(m.Data, &req); err != nil {
				return api.ErrorEnvelope(api.TypeAuctionResponse, err)
			}
			for k, v := range req.Tags {
				if tags[k] != v {
					return nil
				}
			}
			return envelope(t, api.TypeAuctionResponse, api.PingResponse{NodeID: id, Tags: tags})
		})
	}
	c := New(nc, WithQuiet(300*time.Millisecond))
	bids, err := c.Auction(context.Background(), api.AuctionRequest{Tags: map[string]string{"gpu": "yes"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(bids) != 1 || bids[0].NodeID != "NGPU" {
		t.Fatalf("bids = %+v, want only NGPU", bids)
	}
	bids, err = c.Auction(context.Background(), api.AuctionRequest{Tags: map[string]string{"gpu": "maybe"}})
	if err != nil || len(bids) != 0 {
		t.Fatalf("no match: bids = %+v, err = %v; want none and no error", bids, err)
	}
}

func TestAuctionWithoutNodesIsNoNodes(t *testing.T) {
	nc := startServer(t)
	if _, err := New(nc).Auction(context.Background(), api.AuctionRequest{}); !errors.Is(err, ErrNoNodes) {
		t.Fatalf("err = %v, want ErrNoNodes", err)
	}
}

func TestWorkloadPingNothingRunning(t *testing.T) {
	nc := startServer(t)
	got, err := New(nc).WorkloadPing(context.Background(), "default", "echo")
	if err != nil || len(got) != 0 {
		t.Fatalf("WorkloadPing = %+v, %v; want nothing, no error", got, err)
	}
	answer(t, nc.ConnectedUrl(), api.WPingSubject("default", "*"), func(m *nats.Msg) []byte {
		return envelope(t, api.TypeWPingResponse, api.WorkloadPingResponse{NodeID: "N1",
			RunningMachines: []api.WorkloadPingMachine{{ID: "w1", Namespace: "default", Name: api.Token(m.Subject, 3)}}})
	})
	got, err = New(nc).WorkloadPing(context.Background(), "default", "echo")
	if err != nil || len(got) != 1 || got[0].RunningMachines[0].Name != "echo" {
		t.Fatalf("WorkloadPing = %+v, %v; want echo on N1", got, err)
	}
}

func TestTargetedRequests(t *testing.T) {
	nc := startServer(t)
	url := nc.ConnectedUrl()
	const node = "NNODE"
	answer(t, url, api.InfoSubject("default", node), func(*nats.Msg) []byte {
		return envelope(t, api.TypeInfoResponse, api.InfoResponse{Version: "1.2.3",
			Machines: []api.MachineSummary{{ID: "w1", Workload: api.WorkloadDescription{Name: "echo"}}}})
	})
	answer(t, url, api.InfoSubject("other", node), func(*nats.Msg) []byte {
		return api.ErrorEnvelope(api.TypeInfoResponse, errors.New("namespace other is not served here"))
	})
	answer(t, url, api.LameDuckSubject(node), func(*nats.Msg) []byte {
		return envelope(t, api.TypeLameDuckResponse, api.LameDuckResponse{NodeID: node, Success: true})
	})
	c := New(nc)
	ctx := context.Background()

	info, err := c.Info(ctx, "default", node)
	if err != nil || info.Version != "1.2.3" || info.Machines[0].Workload.Name != "echo" {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	_, err = c.Info(ctx, "other", node)
	if !api.IsRemote(err) || !strings.Contains(err.Error(), "namespace other is not served here") {
		t.Fatalf("refusal: err = %v, want the node's RemoteError", err)
	}
	ld, err := c.LameDuck(ctx, node)
	if err != nil || !ld.Success {
		t.Fatalf("LameDuck = %+v, %v", ld, err)
	}
	_, err = c.PingNode(ctx, "NMISSING")
	var nn *NoNodesError
	if !errors.As(err, &nn) || nn.Node != "NMISSING" || !strings.Contains(err.Error(), url) {
		t.Fatalf("missing node: err = %v, want NoNodesError naming NMISSING and %s", err, url)
	}
}

// TestDeployRequestOnTheWire checks what a node receives: the location in
// url.URL object form, a JWT it can verify against the artifact's hash, and
// an environment only its xkey opens.
func TestDeployRequestOnTheWire(t *testing.T) {
	nc := startServer(t)
	issuer, _ := nkeys.CreateAccount()
	sender, _ := nkeys.CreateCurveKeys()
	nodeX, _ := nkeys.CreateCurveKeys()
	nodeXPub, _ := nodeX.PublicKey()
	senderPub, _ := sender.PublicKey()
	const node = "NNODE"
	hash, _, _ := HashReader(strings.NewReader("artifact bytes"))

	received := make(chan error, 1)
	answer(t, nc.ConnectedUrl(), api.DeploySubject("default", node), func(m *nats.Msg) []byte {
		received <- checkDeploy(m.Data, nodeX, hash)
		return envelope(t, api.TypeRunResponse, api.RunResponse{Started: true, ID: "w1", Name: "echo"})
	})

	tok, err := WorkloadJWT(issuer, "echo", hash)
	if err != nil {
		t.Fatal(err)
	}
	env, err := SealEnvironment(sender, nodeXPub, map[string]string{"nats_url": "nats://127.0.0.1:4222"})
	if err != nil {
		t.Fatal(err)
	}
	loc, err := NATSLocation(DefaultBucket, "echo")
	if err != nil {
		t.Fatal(err)
	}
	tn := node
	res, err := New(nc).Deploy(context.Background(), "default", node, api.DeployRequest{
		WorkloadType: api.WorkloadNative, Location: loc, WorkloadJWT: &tok,
		EncryptedEnvironment: &env, SenderPublicKey: &senderPub, TargetNode: &tn,
	})
	if err != nil || !res.Started || res.ID != "w1" {
		t.Fatalf("Deploy = %+v, %v", res, err)
	}
	if err := <-received; err != nil {
		t.Fatal(err)
	}
}

// checkDeploy is what a node does with a deploy request, reduced to the
// parts the client is responsible for.
func checkDeploy(body []byte, nodeX nkeys.KeyPair, wantHash string) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return err
	}
	var loc map[string]any
	if err := json.Unmarshal(raw["location"], &loc); err != nil {
		return fmt.Errorf("location is not a JSON object (url.URL form): %s", raw["location"])
	}
	if loc["Scheme"] != "nats" || loc["Host"] != DefaultBucket || loc["Path"] != "/echo" {
		return fmt.Errorf("location = %v", loc)
	}
	var req api.DeployRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return err
	}
	if req.Location.Bucket() != DefaultBucket || req.Location.Key() != "echo" {
		return fmt.Errorf("location bucket/key = %s/%s", req.Location.Bucket(), req.Location.Key())
	}
	claims, err := verifyWorkloadJWT(*req.WorkloadJWT)
	if err != nil {
		return err
	}
	if claims.Subject != "echo" || claims.Data["hash"] != wantHash {
		return fmt.Errorf("claims sub=%s hash=%v", claims.Subject, claims.Data["hash"])
	}
	env, err := openEnvironment(nodeX, *req.SenderPublicKey, *req.EncryptedEnvironment)
	if err != nil {
		return err
	}
	if env["nats_url"] != "nats://127.0.0.1:4222" {
		return fmt.Errorf("environment = %v", env)
	}
	return nil
}
