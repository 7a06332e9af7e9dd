package api

import (
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

// keysOf returns the sorted JSON field names of v, recursively for objects.
func keysOf(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	var out []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			out = append(out, prefix+k)
			if sub, ok := v.(map[string]any); ok && k != "tags" {
				walk(prefix+k+".", sub)
			}
			if arr, ok := v.([]any); ok && len(arr) > 0 {
				if sub, ok := arr[0].(map[string]any); ok {
					walk(prefix+k+"[].", sub)
				}
			}
		}
	}
	walk("", m)
	sort.Strings(out)
	return out
}

// TestWireFieldNames pins every shape's JSON field names to the golden file
// written from shared/PROTOCOL.md; a rename breaks Nex 0.2 clients.
func TestWireFieldNames(t *testing.T) {
	now := time.Unix(1700000000, 0).UTC()
	shapes := map[string]any{
		"PingResponse": PingResponse{NodeID: "N", Nexus: "x", Version: "v", Uptime: "1s", TargetXkey: "X",
			Tags: map[string]string{"a": "b"}, RunningMachines: 1},
		"AuctionRequest": AuctionRequest{Arch: ptr("amd64"), OS: ptr("linux"), Sandboxed: ptr(true),
			Tags: map[string]string{"a": "b"}, WorkloadTypes: []string{"native"}},
		"WorkloadPingResponse": WorkloadPingResponse{NodeID: "N", TargetXkey: "X", Version: "v", Tags: map[string]string{"a": "b"},
			Uptime: "1s", RunningMachines: []WorkloadPingMachine{{ID: "i", Namespace: "n", Name: "m", Type: "native"}}},
		"InfoResponse": InfoResponse{Version: "v", Uptime: "1s", PublicXKey: "X", Tags: map[string]string{"a": "b"},
			Memory: &MemoryStat{1, 2, 3}, Machines: []MachineSummary{{ID: "i", Healthy: true, Uptime: "1s", Namespace: "n",
				Workload: WorkloadDescription{Name: "n", Description: "d", Runtime: "r", Type: "t", Hash: "h"}}},
			SupportedWorkloadTypes: []string{"native"}},
		"DeployRequest": DeployRequest{Argv: []string{"a"}, Description: ptr("d"), WorkloadType: "native",
			Location: &Location{URL: url.URL{Scheme: "nats", Host: "B", Path: "/k"}}, Essential: ptr(true),
			WorkloadJWT: ptr("j"), EncryptedEnvironment: ptr("e"), JsDomain: ptr("d"), SenderPublicKey: ptr("X"),
			TargetNode: ptr("N"), TriggerSubjects: []string{"t"}, TriggerConnection: &ConnectionInfo{"u", "j", "s"},
			HostServices: &ConnectionInfo{"u", "j", "s"}, RetryCount: ptr(uint(1)), RetriedAt: &now},
		"RunResponse":      RunResponse{Started: true, ID: "i", Issuer: "A", Name: "n"},
		"StopRequest":      StopRequest{WorkloadID: "i", WorkloadJWT: "j", TargetNode: "N"},
		"StopResponse":     StopResponse{Stopped: true, ID: "i", Issuer: "A", Name: "n"},
		"LameDuckResponse": LameDuckResponse{NodeID: "N", Success: true},
		"LogEntry":         LogEntry{Namespace: "n", NodeID: "N", WorkloadID: "i", Timestamp: now, Text: "t", Level: 0, ID: "x"},
		"CloudEvent": CloudEvent{SpecVersion: "1.0", ID: "i", Source: "N", Type: "t", Time: now,
			DataContentType: "application/json", Data: json.RawMessage(`{}`), Namespace: "system"},
		"HeartbeatEvent": HeartbeatEvent{Version: "v", NodeID: "N", Nexus: "x", Uptime: "1s", Tags: map[string]string{"a": "b"}},
	}
	got := map[string][]string{}
	for name, v := range shapes {
		got[name] = keysOf(t, v)
	}
	golden := filepath.Join("testdata", "wire_fields.json")
	if os.Getenv("UPDATE_GOLDEN") == "1" {
		b, _ := json.MarshalIndent(got, "", "  ")
		_ = os.WriteFile(golden, append(b, '\n'), 0o644)
	}
	b, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	var want map[string][]string
	if err := json.Unmarshal(b, &want); err != nil {
		t.Fatal(err)
	}
	for name, w := range want {
		if strings.Join(got[name], ",") != strings.Join(w, ",") {
			t.Errorf("%s fields\n got %v\nwant %v", name, got[name], w)
		}
	}
}

func TestLocationAcceptsURLObjectAndString(t *testing.T) {
	// What a Nex 0.2 client sends: Go's url.URL marshalled as an object.
	u, _ := url.Parse("nats://NEXCLIFILES/echoservice")
	obj, _ := json.Marshal(u)
	for _, raw := range [][]byte{obj, []byte(`"nats://NEXCLIFILES/echoservice"`)} {
		var l Location
		if err := json.Unmarshal(raw, &l); err != nil {
			t.Fatalf("%s: %v", raw, err)
		}
		if l.Scheme != "nats" || l.Bucket() != "NEXCLIFILES" || l.Key() != "echoservice" {
			t.Fatalf("%s decoded as %+v", raw, l)
		}
	}
	out, _ := json.Marshal(Location{URL: *u})
	if !strings.Contains(string(out), `"Scheme":"nats"`) || !strings.Contains(string(out), `"Host":"NEXCLIFILES"`) {
		t.Fatalf("location must marshal in url.URL object form, got %s", out)
	}
}

func TestEnvelope(t *testing.T) {
	b, err := NewEnvelope(TypePingResponse, PingResponse{NodeID: "N1"})
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"type":"io.nats.nex.v1.ping_response","data":{"node_id":"N1","version":"","uptime":"","target_xkey":"","running_machines":0}}` {
		t.Fatalf("envelope %s", b)
	}
	var p PingResponse
	if err := DecodeEnvelope(b, &p); err != nil || p.NodeID != "N1" {
		t.Fatal(err, p)
	}
	eb := ErrorEnvelope(TypeRunResponse, errors.New("invalid workload JWT: expired"))
	if err := DecodeEnvelope(eb, &p); !IsRemote(err) || err.Error() != "invalid workload JWT: expired" {
		t.Fatalf("got %v", err)
	}
	if string(eb) != `{"type":"io.nats.nex.v1.run_response","data":{},"error":"invalid workload JWT: expired"}` {
		t.Fatalf("error envelope %s", eb)
	}
}

func TestSubjects(t *testing.T) {
	for got, want := range map[string]string{
		PingSubject():                             "$NEX.PING",
		PingNodeSubject("N1"):                     "$NEX.PING.N1",
		InfoSubject("default", "N1"):              "$NEX.INFO.default.N1",
		DeploySubject("default", "N1"):            "$NEX.DEPLOY.default.N1",
		StopSubject("default", "N1"):              "$NEX.STOP.default.N1",
		LameDuckSubject("N1"):                     "$NEX.LAMEDUCK.N1",
		WPingSubject("default", ""):               "$NEX.WPING.default",
		WPingSubject("default", "echo"):           "$NEX.WPING.default.echo",
		EventSubject("system", "heartbeat"):       "$NEX.events.system.heartbeat",
		LogSubject("default", "N1", "w1", "echo"): "$NEX.logs.default.N1.w1.echo",
	} {
		if got != want {
			t.Errorf("got %s want %s", got, want)
		}
	}
}
