package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestStageIntoGuest pushes files into real guests over the file port, in
// a cold-booted VM and in a snapshot clone (whose template was saved before
// any file was sent, and whose QEMU dials its own files.sock):
//
//   - a file too big for the guest's RAM is refused with a clear error, and
//     the port stays usable;
//   - a random data file arrives byte-exact (the probe hashes it in the
//     guest);
//   - the probe itself is staged, and the agent runs it from there: the
//     harness serves no artifact, so a fetch over NATS would fail the
//     deploy;
//   - a file staged ahead (as a node's prestage does) and listed in the
//     deploy's Unstage is gone from the guest when the workload runs.
func TestStageIntoGuest(t *testing.T) {
	requireVM(t)
	inColdAndCloned(t, vmSetup(t), testStage)
}

func testStage(t *testing.T, d *Driver) {
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	h := sandboxtest.NewHarness(t)
	ag := h.AddAgent("stage" + strings.ReplaceAll(t.Name(), "/", ""))
	sb := startReady(t, ctx, d, ag)
	st, ok := sb.(sandbox.Stager)
	if !ok {
		t.Fatalf("%T does not implement sandbox.Stager", sb)
	}

	// The default guest (128 MiB) cannot hold 96 MiB in its tmpfs.
	big, _ := artifact(t, 96<<20)
	if _, err := st.Stage(ctx, big, "big"); err == nil || !strings.Contains(err.Error(), "does not fit") ||
		!strings.Contains(err.Error(), "memsize_mib") {
		t.Fatalf("staging 96 MiB into a 128 MiB guest: %v; want a clear refusal", err)
	}

	data, dataBytes := artifact(t, 5<<20+123)
	dataPath, err := st.Stage(ctx, data, "data")
	if err != nil {
		t.Fatal(err)
	}
	if want := agentapi.StagedDir + "/data"; dataPath != want {
		t.Fatalf("staged data at %q, want %q", dataPath, want)
	}
	// Both test kernels (Debian's, with virtio_blk as a module, and nex's
	// own, with it built in) read the stage disk.
	if via := sb.(*vm).files.via(); via != "stage disk" {
		t.Fatalf("the file crossed by %s, want the stage disk", via)
	}

	probePath := netprobe(t)
	probe, err := os.ReadFile(probePath)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(probe)
	hash := hex.EncodeToString(sum[:])
	staged, err := st.Stage(ctx, probePath, hash)
	if err != nil {
		t.Fatal(err)
	}
	aheadFile, _ := artifact(t, 1<<20)
	ahead, err := st.Stage(ctx, aheadFile, "ahead")
	if err != nil {
		t.Fatal(err)
	}
	// The agent rehearsed a deploy while the files came (agent/rehearse.go):
	// this image's /init ran as a program of its own and exited 0.
	waitConsole(t, ctx, sb.(*vm), "rehearsed a deploy")
	r, err := ag.Deploy(ctx, agentapi.Deploy{WorkloadID: "staged", Name: "netprobe", Namespace: "default",
		Type: "native", Argv: []string{"sha256/" + dataPath, "sha256/" + ahead}, Hash: hash, Size: int64(len(probe)),
		StagedPath: staged, Unstage: []string{ahead}}, nil)
	if err != nil || !r.OK {
		t.Fatalf("deploy the staged probe: %+v, %v", r, err)
	}
	if err := ag.WaitLog(ctx, "stdout", "probes done"); err != nil {
		t.Fatal(err)
	}
	// The guest's NATS connections are spliced by the driver: no forward command stays behind
	// for them on the host (BenchmarkIdleMemory's helpers).
	if pids := helperPIDs(sb.(*vm)); len(pids) > 0 {
		t.Fatalf("host processes %v besides QEMU run in the VM's dir", pids)
	}
	// The agent reached the node over the NATS port: the guest has no
	// other way.
	if n := sb.(*vm).portConns.Load(); n < 1 {
		t.Fatalf("%d connections over the NATS port; want the agent's", n)
	}
	var got, gotAhead string
	for _, l := range ag.Logs() {
		if v, ok := strings.CutPrefix(l.Text, "probe sha256/"+dataPath+" "); ok && l.Stream == "stdout" {
			got = v
		}
		if v, ok := strings.CutPrefix(l.Text, "probe sha256/"+ahead+" "); ok && l.Stream == "stdout" {
			gotAhead = v
		}
	}
	if !strings.Contains(gotAhead, "no such file") {
		t.Fatalf("the file staged ahead and unstaged, read in the guest: %q; want it gone", gotAhead)
	}
	if sum := sha256.Sum256(dataBytes); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 of the staged file in the guest = %q, want %x (the host's)", got, sha256.Sum256(dataBytes))
	}
}

// waitConsole waits until the guest's console has a line containing want.
func waitConsole(t *testing.T, ctx context.Context, v *vm, want string) {
	t.Helper()
	var console []byte
	for !strings.Contains(string(console), want) {
		if ctx.Err() != nil {
			t.Fatalf("console.log lacks %q:\n%s", want, console)
		}
		time.Sleep(20 * time.Millisecond)
		console, _ = os.ReadFile(v.path(consoleFile))
	}
}
