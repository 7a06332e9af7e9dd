package qemu

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestWorkloadOutOfMemory deploys a workload that wants more memory than
// its VM has (1 GiB of 128 MiB). The guest kernel's OOM killer ends the
// workload, not the VM: the exit event says why, in place of a bare
// "killed by signal 9", and the VM then ends cleanly, as after any
// workload.
func TestWorkloadOutOfMemory(t *testing.T) {
	vmWithWorkload(t, "oom", nil, func(t *testing.T, ctx context.Context, d *Driver, ag *sandboxtest.Agent, sb sandbox.Sandbox, wl []byte) {
		deployWorkload(t, ctx, ag, wl, "eat", "1024")
		e, err := ag.WaitEvent(ctx, agentapi.EventWorkloadExited)
		if err != nil {
			t.Fatal(err)
		}
		if e.Code != 137 || !strings.Contains(e.Message, "killed by signal 9") ||
			!strings.Contains(e.Message, "OOM killer: the machine ran out of memory (the workload had ") {
			t.Fatalf("exit event = %+v; want code 137, the OOM killer and the memory it had", e)
		}
		if err := ag.WaitLog(ctx, "stdout", "hello stdout"); err != nil {
			t.Fatalf("the workload never got going: %v", err)
		}
		select {
		case <-sb.Done():
		case <-ctx.Done():
			t.Fatal("the VM did not end after its workload")
		}
		if err := sb.Err(); err != nil {
			t.Fatalf("the VM ended with %v; want nil, as after any workload", err)
		}
		t.Logf("exit: %s", e.Message)
	})
}

// deployWorkload deploys the suite's workload (wl) into ag's sandbox with
// argv, named for argv[0], and fails tb unless it started.
func deployWorkload(tb testing.TB, ctx context.Context, ag *sandboxtest.Agent, wl []byte, argv ...string) {
	tb.Helper()
	r, err := ag.Deploy(ctx, agentapi.Deploy{WorkloadID: argv[0], Name: argv[0], Namespace: "default",
		Type: "native", Argv: argv}, wl)
	if err != nil || !r.OK {
		tb.Fatalf("deploy %v: %+v, %v", argv, r, err)
	}
}

// vmWithWorkload runs test in a cold-booted VM and in a clone of d's kind,
// each started for an agent named prefix+the test's name (mod, if set,
// changes its spec) and handshaken, with the suite's workload (wl) at hand
// and ctx bounding the test.
func vmWithWorkload(t *testing.T, prefix string, mod func(*sandbox.Spec),
	test func(t *testing.T, ctx context.Context, d *Driver, ag *sandboxtest.Agent, sb sandbox.Sandbox, wl []byte)) {
	requireVM(t)
	a := vmSetup(t)
	wl, err := os.ReadFile(sandboxtest.BuildWorkload(t))
	if err != nil {
		t.Fatal(err)
	}
	inColdAndCloned(t, a, func(t *testing.T, d *Driver) {
		ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
		defer cancel()
		h := sandboxtest.NewHarness(t)
		ag := h.AddAgent(prefix + strings.ReplaceAll(t.Name(), "/", ""))
		var mods []func(*sandbox.Spec)
		if mod != nil {
			mods = append(mods, mod)
		}
		test(t, ctx, d, ag, startReady(t, ctx, d, ag, mods...), wl)
	})
}
