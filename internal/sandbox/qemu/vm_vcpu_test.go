package qemu

import (
	"context"
	"testing"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestTwoVCPUs boots VMs of machine_template.vcpu_count 2, cold and
// cloned: the workload in each runs on both CPUs. (Under TCG, QEMU runs
// one host thread per vCPU; the clone's template is of the same shape.)
func TestTwoVCPUs(t *testing.T) {
	vmWithWorkload(t, "smp", func(s *sandbox.Spec) { s.VCPU = 2 }, func(t *testing.T, ctx context.Context, d *Driver, ag *sandboxtest.Agent, sb sandbox.Sandbox, wl []byte) {
		deployWorkload(t, ctx, ag, wl, "cpus")
		e, err := ag.WaitEvent(ctx, agentapi.EventWorkloadExited)
		if err != nil {
			t.Fatal(err)
		}
		if e.Code != 0 {
			t.Fatalf("exit event = %+v", e)
		}
		if err := ag.WaitLog(ctx, "stdout", "cpus 2"); err != nil {
			t.Fatalf("the workload did not see 2 CPUs: %v", err)
		}
		select {
		case <-sb.Done():
		case <-ctx.Done():
			t.Fatal("the VM did not end after its workload")
		}
	})
}
