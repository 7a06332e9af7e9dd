package cli

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/devkeys"
)

func TestDevrunStopAndRun(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	url := ccServer(t)
	gpu := newStandInNode(t, url, map[string]string{"gpu": "yes"})
	newStandInNode(t, url, map[string]string{"gpu": "no"})
	ctx := context.Background()

	// A file big enough for the progress line.
	bin := filepath.Join(t.TempDir(), "echo.service.bin")
	payload := make([]byte, 3<<20)
	for i := range payload {
		payload[i] = byte(i)
	}
	if err := os.WriteFile(bin, payload, 0o755); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := ccRun(t, ctx, "devrun", bin, "nats_url=nats://127.0.0.1:4222", "SECRET=x=y",
		"--tag", "gpu=yes", "--argv=-v", "--argv", "a,b", "--essential", "--json", "-s", url)
	if code != 0 {
		t.Fatalf("devrun: exit %d: %s", code, errOut)
	}
	var res deployResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("devrun --json: %v\n%s", err, out)
	}
	if !res.Started || res.Node != gpu.id || res.Name != "echo-service" || res.Type != api.WorkloadNative ||
		res.Location != "nats://NEXCLIFILES/echo-service" {
		t.Fatalf("devrun result = %+v, want echo-service on the gpu node %s", res, gpu.id)
	}
	if !strings.Contains(errOut, "upload echo-service: 3145728/3145728 bytes (100%)") {
		t.Errorf("no final progress line on stderr: %q", errOut)
	}
	gpu.mu.Lock()
	env, req := gpu.lastEnv, gpu.lastReq
	gpu.mu.Unlock()
	if env["nats_url"] != "nats://127.0.0.1:4222" || env["SECRET"] != "x=y" {
		t.Errorf("node opened environment %v", env)
	}
	if strings.Join(req.Argv, "|") != "-v|a,b" || req.Essential == nil || !*req.Essential {
		t.Errorf("argv %q essential %v", req.Argv, req.Essential)
	}
	// The keys were made on first use, private, and signed the deploy.
	issuerFile := filepath.Join(home, ".nex", devkeys.IssuerFile)
	for _, f := range []string{issuerFile, filepath.Join(home, ".nex", devkeys.PublisherFile)} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key file %s: %v %v", f, st, err)
		}
	}
	iss, _ := devkeys.LoadIssuer(issuerFile)
	issPub, _ := iss.PublicKey()
	if res.Issuer != issPub {
		t.Errorf("deploy issuer %s, want ~/.nex/issuer.nk's %s", res.Issuer, issPub)
	}

	// devrun --stop replaces the running workload of the same name.
	code, out, errOut = ccRun(t, ctx, "devrun", bin, "--name", "echo-service", "--node", gpu.id[:8], "--stop", "-s", url)
	if code != 0 {
		t.Fatalf("devrun --stop: exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "stopped workload "+res.ID+" (echo-service)") {
		t.Errorf("stderr does not report the stop: %q", errOut)
	}
	running := gpu.running()
	if _, still := running[res.ID]; still || len(running) != 1 {
		t.Fatalf("after devrun --stop running = %v, want only the new workload", running)
	}
	var newID string
	for id := range running {
		newID = id
	}
	if !strings.Contains(out, "workload "+newID+" (echo-service) started on node "+gpu.id) {
		t.Errorf("devrun output %q", out)
	}

	// nex stop asks the node for the name and signs with the same issuer.
	code, out, errOut = ccRun(t, ctx, "stop", gpu.id, newID, "-s", url)
	if code != 0 || !strings.Contains(out, "workload "+newID+" (echo-service) stopped") {
		t.Fatalf("stop: exit %d, %q, %s", code, out, errOut)
	}
	if len(gpu.running()) != 0 {
		t.Fatalf("still running after stop: %v", gpu.running())
	}

	// nex run deploys the uploaded object again, hashing it from the store.
	code, out, errOut = ccRun(t, ctx, "run", "nats://NEXCLIFILES/echo-service", gpu.id, "--type", "js", "--json", "-s", url)
	if code != 0 {
		t.Fatalf("run: exit %d: %s", code, errOut)
	}
	var runRes deployResult
	if err := json.Unmarshal([]byte(out), &runRes); err != nil || runRes.Type != api.WorkloadV8 || runRes.Hash != res.Hash {
		t.Fatalf("run result %+v (%v), want type v8 and hash %s", runRes, err, res.Hash)
	}

	// A stop signed by another issuer is refused by the node.
	other := filepath.Join(t.TempDir(), "other.nk")
	if _, err := devkeys.LoadOrCreateIssuer(other); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = ccRun(t, ctx, "stop", gpu.id, runRes.ID, "--issuer", other, "-s", url)
	if code == 0 || !strings.Contains(errOut, "issuer differs") {
		t.Fatalf("foreign stop: exit %d, %s", code, errOut)
	}
}

func TestDevrunRefusals(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	url := ccServer(t)
	newStandInNode(t, url, nil)
	ctx := context.Background()
	wasm := filepath.Join(t.TempDir(), "fn.wasm")
	if err := os.WriteFile(wasm, []byte("\x00asm"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stop", "NXXX", "w1", "-s", url}, "no issuer key at"}, // before any devrun made one
		{[]string{"devrun", wasm, "-s", url}, "no node bid for a wasm workload"},
		{[]string{"devrun", wasm, "--type", "native", "--tag", "gpu=yes", "-s", url}, "no node bid for a native workload with tags gpu=yes"},
		{[]string{"devrun", wasm, "--name", "bad name", "-s", url}, `workload name "bad name"`},
		{[]string{"devrun", wasm, "NOEQUALS", "-s", url}, `environment "NOEQUALS": want KEY=value`},
	} {
		code, _, errOut := ccRun(t, ctx, c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", c.args, code, errOut, c.want)
		}
	}
}
