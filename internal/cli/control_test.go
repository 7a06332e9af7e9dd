package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/natsd"
)

// ccServer starts the embedded control-plane server (JetStream on) for the
// control-client command tests and returns its URL.
func ccServer(t *testing.T) string {
	t.Helper()
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Shutdown)
	return cp.ClientURL()
}

// ccRun runs the CLI and returns exit code, stdout and stderr.
func ccRun(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := Main(ctx, args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// standInNode answers the control subjects the way PROTOCOL.md says a node
// does, checking what the client sends as strictly as a node must (JWT
// signature and claims, artifact hash against the object store, sealed
// environment), so the commands are tested against the contract. End-to-end
// tests against the real node live in test/e2e.
type standInNode struct {
	t    *testing.T
	id   string
	xkey nkeys.KeyPair
	tags map[string]string
	nc   *nats.Conn

	mu       sync.Mutex
	machines map[string]*standInMachine
	n        int
	lameDuck bool
	lastEnv  map[string]string
	lastReq  api.DeployRequest
}

type standInMachine struct {
	ns, name, typ, hash, issuer, jti string
	iat                              int64
}

func newStandInNode(t *testing.T, url string, tags map[string]string) *standInNode {
	t.Helper()
	kp, _ := nkeys.CreateServer()
	id, _ := kp.PublicKey()
	xkey, _ := nkeys.CreateCurveKeys()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	s := &standInNode{t: t, id: id, xkey: xkey, tags: tags, nc: nc, machines: map[string]*standInMachine{}}
	handlers := map[string]func(*nats.Msg) ([]byte, error){
		api.PingSubject():          s.ping,
		api.PingNodeSubject(id):    s.ping,
		api.AuctionSubject():       s.auction,
		api.WPingSubject("*", ""):  s.wping,
		api.WPingSubject("*", "*"): s.wping,
		api.InfoSubject("*", id):   s.info,
		api.DeploySubject("*", id): s.deploy,
		api.StopSubject("*", id):   s.stop,
		api.LameDuckSubject(id):    s.lameduck,
	}
	for subj, h := range handlers {
		if _, err := nc.Subscribe(subj, func(m *nats.Msg) {
			b, err := h(m)
			if err != nil {
				b = api.ErrorEnvelope("io.nats.nex.v1.error", err)
			}
			if b != nil {
				_ = m.Respond(b)
			}
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *standInNode) pingResponse() api.PingResponse {
	s.mu.Lock()
	defer s.mu.Unlock()
	x, _ := s.xkey.PublicKey()
	return api.PingResponse{NodeID: s.id, Version: "0.0.0-test", Uptime: "1m2s", TargetXkey: x,
		Tags: s.tags, RunningMachines: len(s.machines)}
}

func (s *standInNode) ping(*nats.Msg) ([]byte, error) {
	return api.NewEnvelope(api.TypePingResponse, s.pingResponse())
}

func (s *standInNode) auction(m *nats.Msg) ([]byte, error) {
	var req api.AuctionRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return nil, err
	}
	for _, typ := range req.WorkloadTypes {
		if typ != api.WorkloadNative && typ != api.WorkloadV8 {
			return nil, nil
		}
	}
	for k, v := range req.Tags {
		if s.tags[k] != v {
			return nil, nil
		}
	}
	if s.lameDuck {
		return nil, nil
	}
	return api.NewEnvelope(api.TypeAuctionResponse, s.pingResponse())
}

func (s *standInNode) wping(m *nats.Msg) ([]byte, error) {
	ns, match := api.Token(m.Subject, 2), api.Token(m.Subject, 3)
	s.mu.Lock()
	var running []api.WorkloadPingMachine
	for id, w := range s.machines {
		if w.ns == ns && (match == "" || match == id || match == w.name) {
			running = append(running, api.WorkloadPingMachine{ID: id, Namespace: ns, Name: w.name, Type: w.typ})
		}
	}
	s.mu.Unlock()
	if len(running) == 0 {
		return nil, nil
	}
	r := s.pingResponse()
	return api.NewEnvelope(api.TypeWPingResponse, api.WorkloadPingResponse{NodeID: s.id, TargetXkey: r.TargetXkey,
		Version: r.Version, Uptime: r.Uptime, RunningMachines: running})
}

func (s *standInNode) info(m *nats.Msg) ([]byte, error) {
	ns := api.Token(m.Subject, 2)
	x, _ := s.xkey.PublicKey()
	s.mu.Lock()
	defer s.mu.Unlock()
	machines := []api.MachineSummary{}
	for id, w := range s.machines {
		if w.ns == ns {
			machines = append(machines, api.MachineSummary{ID: id, Healthy: true, Uptime: "0s", Namespace: ns,
				Workload: api.WorkloadDescription{Name: w.name, Runtime: w.typ, Type: w.typ, Hash: w.hash}})
		}
	}
	return api.NewEnvelope(api.TypeInfoResponse, api.InfoResponse{Version: "0.0.0-test", Uptime: "1m2s",
		PublicXKey: x, Tags: s.tags, Memory: &api.MemoryStat{MemTotal: 16 << 20, MemFree: 8 << 20, MemAvailable: 12 << 20},
		Machines: machines, SupportedWorkloadTypes: []string{api.WorkloadNative, api.WorkloadV8},
		Pool: &api.PoolStatus{Driver: "process", Target: 2, Ready: 2}})
}

func (s *standInNode) deploy(m *nats.Msg) ([]byte, error) {
	ns := api.Token(m.Subject, 2)
	var req api.DeployRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return nil, fmt.Errorf("decode deploy: %w", err)
	}
	var shape struct {
		Location map[string]any `json:"location"`
	}
	if err := json.Unmarshal(m.Data, &shape); err != nil {
		return nil, fmt.Errorf("location is not in url.URL object form: %w", err)
	}
	if req.TargetNode == nil || *req.TargetNode != s.id {
		return nil, errors.New("target_node is not this node")
	}
	claims, err := jwt.DecodeGeneric(*req.WorkloadJWT)
	if err != nil {
		return nil, fmt.Errorf("workload JWT: %w", err)
	}
	if !nkeys.IsValidPublicAccountKey(claims.Issuer) {
		return nil, errors.New("workload JWT issuer is not an account")
	}
	hash, _ := claims.Data["hash"].(string)
	js, _ := jetstream.New(s.nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	obs, err := js.ObjectStore(ctx, req.Location.Bucket())
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", req.Location.Bucket(), err)
	}
	obj, err := obs.Get(ctx, req.Location.Key())
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", req.Location, err)
	}
	got, _, err := controlclient.HashReader(obj)
	obj.Close()
	if err != nil || got != hash {
		return nil, fmt.Errorf("artifact hash %s does not match the JWT's %s", got, hash)
	}
	sealed, err := base64.StdEncoding.DecodeString(*req.EncryptedEnvironment)
	if err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	plain, err := s.xkey.Open(sealed, *req.SenderPublicKey)
	if err != nil {
		return nil, fmt.Errorf("open environment: %w", err)
	}
	var env map[string]string
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	s.mu.Lock()
	s.n++
	id := fmt.Sprintf("w%d", s.n)
	s.machines[id] = &standInMachine{ns: ns, name: claims.Subject, typ: req.WorkloadType, hash: hash,
		issuer: claims.Issuer, jti: claims.ID, iat: claims.IssuedAt}
	s.lastEnv, s.lastReq = env, req
	s.mu.Unlock()
	return api.NewEnvelope(api.TypeRunResponse, api.RunResponse{Started: true, ID: id, Issuer: claims.Issuer, Name: claims.Subject})
}

func (s *standInNode) stop(m *nats.Msg) ([]byte, error) {
	var req api.StopRequest
	if err := json.Unmarshal(m.Data, &req); err != nil {
		return nil, err
	}
	claims, err := jwt.DecodeGeneric(req.WorkloadJWT)
	if err != nil {
		return nil, fmt.Errorf("stop JWT: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, ok := s.machines[req.WorkloadID]
	if !ok {
		return nil, fmt.Errorf("no workload %s", req.WorkloadID)
	}
	switch {
	case claims.Subject != w.name || claims.Issuer != w.issuer:
		return nil, errors.New("stop JWT subject or issuer differs from the deploy's")
	case claims.ID == w.jti || claims.IssuedAt == w.iat:
		return nil, errors.New("stop JWT reuses the deploy's jti or iat")
	}
	delete(s.machines, req.WorkloadID)
	return api.NewEnvelope(api.TypeStopResponse, api.StopResponse{Stopped: true, ID: req.WorkloadID, Issuer: w.issuer, Name: w.name})
}

func (s *standInNode) lameduck(*nats.Msg) ([]byte, error) {
	s.mu.Lock()
	s.lameDuck = true
	s.mu.Unlock()
	return api.NewEnvelope(api.TypeLameDuckResponse, api.LameDuckResponse{NodeID: s.id, Success: true})
}

func (s *standInNode) running() map[string]standInMachine {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]standInMachine{}
	for id, w := range s.machines {
		out[id] = *w
	}
	return out
}

func TestNodeLsTableAndJSON(t *testing.T) {
	url := ccServer(t)
	a := newStandInNode(t, url, map[string]string{TagNodeName: "alpha"})
	b := newStandInNode(t, url, nil)
	ctx := context.Background()

	code, out, errOut := ccRun(t, ctx, "node", "ls", "-s", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"NATS Execution Nodes", "ID", "Name", "Version", "Uptime", "Workloads", a.id, b.id, "alpha", "1m2s", "╭"} {
		if !strings.Contains(out, want) {
			t.Errorf("node ls output lacks %q:\n%s", want, out)
		}
	}
	first, second := min(a.id, b.id), max(a.id, b.id)
	if strings.Index(out, first) > strings.Index(out, second) {
		t.Errorf("nodes not sorted by id:\n%s", out)
	}

	code, out, errOut = ccRun(t, ctx, "node", "ls", "--json", "-s", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var nodes []api.PingResponse
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("--json output is not a JSON array: %v\n%s", err, out)
	}
	if len(nodes) != 2 || nodes[0].NodeID != first || nodes[1].NodeID != second {
		t.Fatalf("--json nodes = %+v", nodes)
	}
}

func TestNodeLsWithoutNodesSaysWhereItLooked(t *testing.T) {
	url := ccServer(t)
	code, _, errOut := ccRun(t, context.Background(), "node", "ls", "-s", url)
	if code == 0 || !strings.Contains(errOut, "no nex nodes answered on "+url) || !strings.Contains(errOut, "nex node up") {
		t.Fatalf("exit %d, stderr %q; want a failure naming %s", code, errOut, url)
	}
}

func TestNodeInfoAndLameduckByPrefixAndName(t *testing.T) {
	url := ccServer(t)
	n := newStandInNode(t, url, map[string]string{TagNodeName: "alpha", "nex.os": "linux"})
	ctx := context.Background()

	code, out, errOut := ccRun(t, ctx, "node", "info", n.id[:12], "-s", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{n.id, "0.0.0-test", "process driver: 2/2 ready", "16.0 GiB total", "nex.os=linux",
		"native, v8", "No workloads in namespace default."} {
		if !strings.Contains(out, want) {
			t.Errorf("node info lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = ccRun(t, ctx, "node", "info", "alpha", "--json", "-s", url)
	var info api.InfoResponse
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.Pool == nil || info.Pool.Driver != "process" {
		t.Fatalf("node info --json: exit %d, %q, %s", code, out, errOut)
	}
	code, _, errOut = ccRun(t, ctx, "node", "info", "NOPE", "-s", url)
	if code == 0 || !strings.Contains(errOut, `no node with id, id prefix or name "NOPE"`) {
		t.Fatalf("unknown node: exit %d, %s", code, errOut)
	}

	code, out, errOut = ccRun(t, ctx, "node", "lameduck", "alpha", "-s", url)
	if code != 0 || !strings.Contains(out, "node "+n.id+" is in lame-duck mode") {
		t.Fatalf("lameduck: exit %d, %q, %s", code, out, errOut)
	}
}
