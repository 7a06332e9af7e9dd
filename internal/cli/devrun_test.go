package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/devkeys"
)

func TestDevrunStopAndRun(t *testing.T) {
	home := devHome(t)
	p := startPlane(t)
	gpu := p.startNode(withTags(map[string]string{"gpu": "yes"}))
	p.startNode(withTags(map[string]string{"gpu": "no"}))

	bin := workloadFile(t, "echo.service.bin")
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)

	// devrun uploads the file, holds an auction among the tagged nodes and
	// deploys with argv; the workload answers on the control plane.
	code, out, errOut := p.run("devrun", bin, "FOO=bar", "--tag", "gpu=yes", "--argv", "echo", "--argv=svc.echo", "--json")
	if code != 0 {
		t.Fatalf("devrun: exit %d: %s", code, errOut)
	}
	var res deployResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("devrun --json: %v\n%s", err, out)
	}
	if !res.Started || res.Node != gpu.ID() || res.Name != "echo-service" || res.Type != api.WorkloadNative ||
		res.Location != "nats://NEXCLIFILES/echo-service" || res.Hash != hex.EncodeToString(sum[:]) {
		t.Fatalf("devrun result = %+v, want echo-service on the gpu node %s", res, gpu.ID())
	}
	if want := fmt.Sprintf("upload echo-service: %d/%d bytes (100%%)", len(data), len(data)); !strings.Contains(errOut, want) {
		t.Errorf("no final progress line %q on stderr: %q", want, errOut)
	}
	// The keys were made on first use, private, and signed the deploy.
	issuerFile := filepath.Join(home, ".nex", devkeys.IssuerFile)
	for _, f := range []string{issuerFile, filepath.Join(home, ".nex", devkeys.PublisherFile)} {
		if st, err := os.Stat(f); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("key file %s: %v %v", f, st, err)
		}
	}
	iss, err := devkeys.LoadIssuer(issuerFile)
	if err != nil {
		t.Fatal(err)
	}
	issPub, _ := iss.PublicKey()
	if res.Issuer != issPub {
		t.Errorf("deploy issuer %s, want ~/.nex/issuer.nk's %s", res.Issuer, issPub)
	}
	p.waitEcho("svc.echo")

	// devrun --stop replaces the running workload of the same name. The new
	// one prints its environment: the sealed env reached it intact. Being
	// essential, it is restarted after it exits.
	logs := p.follow(controlclient.LogFilter{Namespace: api.DefaultNamespace, Name: "echo-service"}.Subjects(),
		"logs", "--name", "echo-service")
	code, out, errOut = p.run("devrun", bin, "FOO=bar", "SECRET=x=y", "--name", "echo-service", "--node", gpu.ID()[:8],
		"--stop", "--essential", "--argv", "exit", "--argv", "0")
	if code != 0 {
		t.Fatalf("devrun --stop: exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "stopped workload "+res.ID+" (echo-service) on node "+gpu.ID()) {
		t.Errorf("stderr does not report the stop: %q", errOut)
	}
	m := regexp.MustCompile(`^workload (\S+) \(echo-service\) started on node ` + gpu.ID() + "\n$").FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("devrun output %q", out)
	}
	newID := m[1]
	logs.waitFor(newID+" echo-service: env FOO=bar\n", newID+" echo-service: env SECRET=x=y\n")
	logs.waitUntil("the essential workload to be restarted", func(out string) bool {
		return strings.Count(out, newID+" echo-service: hello stdout\n") >= 2
	})
	logs.stop()
	eventually(t, "the replaced workload to stop answering", func() bool {
		_, err := p.nc.Request("svc.echo", nil, 500*time.Millisecond)
		return errors.Is(err, nats.ErrNoResponders)
	})
	info := nodeInfo(t, p, gpu.ID())
	if len(info.Machines) != 1 || info.Machines[0].ID != newID || info.Machines[0].Workload.Name != "echo-service" ||
		info.Machines[0].Workload.Hash != res.Hash {
		t.Fatalf("after devrun --stop the node runs %+v, want only %s", info.Machines, newID)
	}
	out, _ = p.mustRun("node", "info", gpu.ID())
	for _, want := range []string{"Workloads in namespace default", newID, "echo-service", "process", res.Hash[:12]} {
		if !strings.Contains(out, want) {
			t.Errorf("node info lacks %q:\n%s", want, out)
		}
	}

	// nex stop asks the node for the name and signs with the same issuer.
	out, _ = p.mustRun("stop", gpu.ID(), newID)
	if !strings.Contains(out, "workload "+newID+" (echo-service) stopped on node "+gpu.ID()) {
		t.Fatalf("stop: %q", out)
	}
	if info := nodeInfo(t, p, gpu.ID()); len(info.Machines) != 0 {
		t.Fatalf("still running after stop: %+v", info.Machines)
	}

	// nex run deploys the uploaded object again, hashing it from the store.
	runRes := p.deploy("run", "nats://NEXCLIFILES/echo-service", gpu.ID()[:10], "--argv", "echo", "--argv", "svc.again")
	if runRes.Node != gpu.ID() || runRes.Name != "echo-service" || runRes.Type != api.WorkloadNative || runRes.Hash != res.Hash {
		t.Fatalf("run result %+v, want echo-service with hash %s on %s", runRes, res.Hash, gpu.ID())
	}
	p.waitEcho("svc.again")

	// A stop signed by another issuer is refused by the node, and the
	// workload keeps running.
	other := filepath.Join(t.TempDir(), "other.nk")
	if _, err := devkeys.LoadOrCreateIssuer(other); err != nil {
		t.Fatal(err)
	}
	code, _, errOut = p.run("stop", gpu.ID(), runRes.ID, "--issuer", other)
	if code == 0 || !strings.Contains(errOut, "stop refused") || !strings.Contains(errOut, "another issuer") {
		t.Fatalf("foreign stop: exit %d, %s", code, errOut)
	}
	p.waitEcho("svc.again")
}

func TestDevrunRefusals(t *testing.T) {
	devHome(t)
	p := startPlane(t)
	n := p.startNode()
	wasm := filepath.Join(t.TempDir(), "fn.wasm")
	if err := os.WriteFile(wasm, []byte("\x00asm"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stop", "NXXX", "w1"}, "no issuer key at"}, // before any devrun made one
		{[]string{"devrun", wasm}, "no node bid for a wasm workload"},
		{[]string{"devrun", wasm, "--type", "native", "--tag", "gpu=yes"}, "no node bid for a native workload with tags gpu=yes"},
		{[]string{"devrun", wasm, "--name", "bad name"}, `workload name "bad name"`},
		{[]string{"devrun", wasm, "NOEQUALS"}, `environment "NOEQUALS": want KEY=value`},
		// js is v8 on the wire, which this node does not run.
		{[]string{"run", "nats://NEXCLIFILES/fn", n.ID(), "--type", "js", "--hash", strings.Repeat("0", 64)}, `"v8" is not allowed on this node`},
		{[]string{"run", "nats://NEXCLIFILES/missing", n.ID(), "--hash", strings.Repeat("0", 64)}, "artifact refused"},
	} {
		code, _, errOut := p.run(c.args...)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want %q", c.args, code, errOut, c.want)
		}
	}
}
