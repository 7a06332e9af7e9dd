package node

import (
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/node/config"
)

// TestVMWorkloadOutOfMemory deploys a workload that wants more memory than
// its VM has into a node on the qemu driver. The guest's OOM killer ends
// it; the node's workload_undeployed event says so, and names the VM's
// memory and the setting that gives it more.
func TestVMWorkloadOutOfMemory(t *testing.T) {
	img, wl := vmImage(t)
	h := newVMNode(t, img, true, true)
	data, err := os.ReadFile(wl)
	if err != nil {
		t.Fatal(err)
	}
	hash := h.upload("eater", data)
	evs := h.events("$NEX.events.default.*")
	run, err := h.deploy(h.deployRequest("eater", "eater", hash, nil, "eat", "1024"))
	if err != nil {
		t.Fatal(err)
	}
	var und api.WorkloadUndeployedEvent
	eventually(t, 2*time.Minute, "the workload to end", func() bool {
		return evs.last(api.EventWorkloadUndeployed, &und) && und.WorkloadID == run.ID
	})
	if und.Code != 137 || !strings.Contains(und.Message, "OOM killer") ||
		!strings.HasSuffix(und.Message, fmt.Sprintf("; the VM has %d MiB (machine_template.memsize_mib)", config.DefaultMemMiB)) {
		t.Fatalf("workload_undeployed %+v; want code 137, the OOM killer and the VM's memory", und)
	}
	t.Logf("message: %s", und.Message)
}

// TestVMRefusesDynamicExecutable deploys a dynamically linked executable
// into a node on the qemu driver. A guest holds no shared libraries, so the
// node refuses it by name, and before it takes a VM: the pool keeps both.
// (In the guest the kernel would have said "no such file or directory".)
func TestVMRefusesDynamicExecutable(t *testing.T) {
	img, _ := vmImage(t)
	f, err := elf.Open("/bin/true")
	if err != nil {
		t.Skipf("no ELF /bin/true here: %v", err)
	}
	loader := ""
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, _ := io.ReadAll(p.Open())
			loader = strings.TrimRight(string(b), "\x00")
		}
	}
	f.Close()
	if loader == "" {
		t.Skip("/bin/true is statically linked here")
	}
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	h := newVMNode(t, img, true, true)
	hash := h.upload("dyn", data)
	ctx, cancel := context.WithTimeout(h.ctx(), 3*time.Minute)
	defer cancel()
	if err := h.node.pool.Wait(ctx, 2); err != nil {
		t.Fatal(err)
	}
	_, err = h.deploy(h.deployRequest("dyn", "dyn", hash, nil))
	want := "artifact refused: dyn cannot run here: dynamically linked (its loader is " + loader +
		"), and a VM sandbox holds no shared libraries: link it statically (Go: CGO_ENABLED=0 go build)"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("deploy: %v; want %q", err, want)
	}
	if st := h.node.pool.Status(); st.Ready != 2 || st.Starting != 0 {
		t.Fatalf("pool %+v after the refusal; want both VMs still ready", st)
	}
}

// TestVMRefusesArtifactTooBig deploys a file bigger than a VM's RAM can
// hold. The guest refuses it before a byte is written, and the node fails
// the deploy with that refusal instead of streaming the file over NATS
// (which ended, after the whole transfer, in "no space left on device").
func TestVMRefusesArtifactTooBig(t *testing.T) {
	img, wl := vmImage(t)
	data, err := os.ReadFile(wl)
	if err != nil {
		t.Fatal(err)
	}
	data = append(data, make([]byte, 64<<20)...) // still runs: bytes after the ELF's
	h := newVMNode(t, img, true, true, func(c *config.Config) { c.MachineTemplate.MemSizeMiB = 64 })
	hash := h.upload("big", data)
	_, err = h.deploy(h.deployRequest("big", "big", hash, nil, "exit", "0"))
	if err == nil || !strings.Contains(err.Error(), "artifact refused: big: stage into vm") ||
		!strings.Contains(err.Error(), "does not fit in the guest") || !strings.Contains(err.Error(), "machine_template.memsize_mib") {
		t.Fatalf("deploy: %v; want the guest's refusal", err)
	}
	t.Logf("refusal: %v", err)

	// Without the stage (a Firecracker VM has none), the agent in the guest
	// refuses to fetch it.
	h.node.testNoStaging = true
	_, err = h.deploy(h.deployRequest("big", "big", hash, nil, "exit", "0"))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("workload did not start: the agent could not start it: fetch artifact: a %.1f MiB file does not fit in the guest", float64(len(data))/(1<<20))) ||
		!strings.Contains(err.Error(), "left in /tmp/work") {
		t.Fatalf("deploy without staging: %v; want the agent's refusal", err)
	}
}

// TestVMLogFlood: a workload in a VM that writes 50,000 lines as fast as it
// can gets every one of them to the control plane and ends with its own
// exit code, though its agent ends (and the VM powers off) while the node
// still works through its output.
func TestVMLogFlood(t *testing.T) {
	img, wl := vmImage(t)
	h := newVMNode(t, img, true, true)
	testLogFlood(t, h, wl, 50_000, 1)
}
