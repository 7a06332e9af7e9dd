package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

func requireVMTests(t *testing.T) {
	t.Helper()
	if os.Getenv("NEX_VM_TESTS") != "1" {
		t.Skip("microVM test: set NEX_VM_TESTS=1 (./scripts/test does) to boot real guests under QEMU")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("NEX_VM_TESTS=1 but qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
	}
}

func (e *env) nodeInfo(t *testing.T, nodeID string) api.InfoResponse {
	t.Helper()
	var info api.InfoResponse
	if err := json.Unmarshal([]byte(e.run("node", "info", nodeID, "--json")), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

// qemuUnder lists live QEMU processes whose command line names dir.
func qemuUnder(dir string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			out = append(out, pid)
		}
	}
	return out
}

// TestQEMUNodeEchoFromVM is the seed's story with microVMs: a warm pool of
// two QEMU guests whose agents handshake, the echo service deployed into
// one and answering control-plane requests from inside it, QEMU killed
// under an essential workload, a stop that powers the VM off, and a node
// killed with SIGKILL that leaves no QEMU behind after a restart.
func TestQEMUNodeEchoFromVM(t *testing.T) {
	requireVMTests(t)
	requirePortFree(t, "127.0.0.1:4222")
	e := newEnv(t)
	img := sandboxtest.GuestImage(t, e.nex)
	echoBin := filepath.Join(e.dir, "echoservice")
	build := exec.Command("go", "build", "-o", echoBin, "./examples/echoservice")
	build.Dir = moduleRoot(t)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build echoservice: %v\n%s", err, out)
	}
	data := filepath.Join(e.dir, "data")
	stateDir := filepath.Join(data, "state")
	cfgPath := filepath.Join(e.dir, "node.json")
	cfg, _ := json.Marshal(map[string]any{"sandbox": "qemu", "machine_pool_size": 2, "kernel_filepath": img.Kernel,
		"rootfs_filepath": img.Initrd, "handshake_timeout": "180s", "data_dir": data, "agent_ping_interval": "2s"})
	_ = os.WriteFile(cfgPath, cfg, 0o644)

	n := e.startNode("--config", cfgPath)
	deadline := time.Now().Add(5 * time.Minute)
	for strings.Count(n.logText(), "Adding new VM to warm pool") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("the pool of 2 VMs did not fill:\n%s", n.logText())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// vm_snapshots is on by default: one template saved, the pool's VMs
	// restored from it.
	for _, line := range []string{"accel=tcg", "Machine started", "Received agent handshake",
		"Snapshot template saved", "snapshot_clone=true"} {
		if !strings.Contains(n.logText(), line) {
			t.Fatalf("log lacks %q:\n%s", line, n.logText())
		}
	}
	var nodes []api.PingResponse
	_ = json.Unmarshal([]byte(e.run("node", "ls", "--json")), &nodes)
	if len(nodes) != 1 || nodes[0].Tags[api.TagUnsafe] == "true" {
		t.Fatalf("node ls: %+v", nodes)
	}
	nodeID := nodes[0].NodeID
	// node info says how the pool's VMs start.
	if p := e.nodeInfo(t, nodeID).Pool; p == nil || !strings.Contains(p.Boot, "snapshot clones of template") {
		t.Fatalf("node info pool: %+v", p)
	}
	if out := e.run("node", "info", nodeID); !strings.Contains(out, "Sandbox start") || !strings.Contains(out, "snapshot clones") {
		t.Fatalf("node info does not say how VMs start:\n%s", out)
	}

	nc, err := nats.Connect(nats.DefaultURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	echo := func(within time.Duration, payload string) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			m, err := nc.Request("svc.echo", []byte(payload), time.Second)
			if err == nil && string(m.Data) == payload {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("svc.echo did not answer %q within %s: %v\n%s", payload, within, err, n.logText())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	var run struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(e.run("devrun", "--json", "--essential", echoBin)), &run); err != nil {
		t.Fatal(err)
	}
	echo(60*time.Second, "hello from a VM")
	// Both VMs waiting in the pool get the echo service ahead: the one
	// that joined before the deploy is restaged, its refill is staged
	// before it joins. node info says so.
	staged := time.Now().Add(time.Minute)
	for p := e.nodeInfo(t, nodeID).Pool; p == nil || p.StagedAhead != 2; p = e.nodeInfo(t, nodeID).Pool {
		if time.Now().After(staged) {
			t.Fatalf("node info pool %+v: want both VMs holding the echo service\n%s", p, n.logText())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out := e.run("node", "info", nodeID); !strings.Contains(out, "2 holding the artifact deployed last") {
		t.Fatalf("node info does not say the pool holds the artifact:\n%s", out)
	}
	info := e.nodeInfo(t, nodeID)
	if len(info.Machines) != 1 || info.Machines[0].Workload.Runtime != "qemu" || info.Machines[0].SandboxID == "" {
		t.Fatalf("info machines %+v", info.Machines)
	}
	first := info.Machines[0].SandboxID
	b, err := os.ReadFile(filepath.Join(stateDir, "sandboxes", first, "pid"))
	if err != nil {
		t.Fatal(err)
	}
	qpid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(qpid) + "/cmdline"); !strings.Contains(string(cmdline), "qemu-system") {
		t.Fatalf("sandbox %s pid %d is not QEMU", first, qpid)
	}

	// kill -9 of QEMU under the essential workload: it comes back elsewhere.
	_ = syscall.Kill(qpid, syscall.SIGKILL)
	deadline = time.Now().Add(3 * time.Minute)
	for {
		info = e.nodeInfo(t, nodeID)
		if len(info.Machines) == 1 && info.Machines[0].Healthy && info.Machines[0].SandboxID != "" && info.Machines[0].SandboxID != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("essential workload not restarted after QEMU was killed: %+v\n%s", info.Machines, n.logText())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if info.Machines[0].ID != run.ID || info.Machines[0].Retries < 1 {
		t.Fatalf("restart lost the workload's identity: %+v", info.Machines[0])
	}
	echo(60*time.Second, "back again")
	if !strings.Contains(n.logText(), "sandbox died") {
		t.Fatalf("no log of the dead sandbox:\n%s", n.logText())
	}

	// stop powers the VM off and removes its files.
	second := info.Machines[0].SandboxID
	b, _ = os.ReadFile(filepath.Join(stateDir, "sandboxes", second, "pid"))
	qpid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	e.run("stop", nodeID, run.ID)
	if _, err := nc.Request("svc.echo", []byte("x"), time.Second); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("after stop: %v", err)
	}
	if syscall.Kill(qpid, 0) == nil {
		t.Fatalf("QEMU %d still running after stop", qpid)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "sandboxes", second)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("sandbox dir of the stopped VM remains: %v", err)
	}

	// A new version (the same binary with bytes appended, so another
	// artifact) goes into a pooled VM that holds the old one ahead: the
	// node has the guest delete the old file, stages the new one, and the
	// new version answers.
	echo2 := filepath.Join(e.dir, "echoservice-v2")
	if b, err := os.ReadFile(echoBin); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(echo2, append(b, "v2"...), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(e.run("devrun", "--json", echo2)), &run); err != nil {
		t.Fatal(err)
	}
	echo(60*time.Second, "from the new version")
	e.run("stop", nodeID, run.ID)

	// kill -9 of the node, then a restart: nothing of the old one survives.
	_ = n.cmd.Process.Kill()
	<-n.done
	n2 := e.startNode("--config", cfgPath)
	n2.waitLog(t, "NATS execution engine awaiting commands", 60*time.Second)
	old := []int{}
	for _, pid := range qemuUnder(stateDir) {
		if !strings.Contains(n2.logText(), strconv.Itoa(pid)) {
			old = append(old, pid)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(old) > 0 && time.Now().Before(deadline) {
		alive := old[:0]
		for _, pid := range old {
			if syscall.Kill(pid, 0) == nil {
				alive = append(alive, pid)
			}
		}
		old = alive
		time.Sleep(100 * time.Millisecond)
	}
	if len(old) > 0 {
		t.Fatalf("QEMU processes of the killed node still run: %v", old)
	}
	_ = n2.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-n2.done:
		if err != nil {
			t.Fatalf("node exit: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("node did not stop")
	}
	if left := qemuUnder(stateDir); len(left) > 0 {
		t.Fatalf("QEMU left after a graceful stop: %v", left)
	}
}
