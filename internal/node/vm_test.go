package node

import (
	"fmt"
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
