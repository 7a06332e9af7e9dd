package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// TestStageRehearsedWhileIdle: a VM that no file has reached yet rehearses
// a stage from its disk after its handshake (vminit.FileServer.Rehearse);
// the rehearsal's file is gone afterwards, and a file staged next arrives
// whole.
func TestStageRehearsedWhileIdle(t *testing.T) {
	requireVM(t)
	inColdAndCloned(t, vmSetup(t), func(t *testing.T, d *Driver) {
		ctx, ag, sb := readyVM(t, d, "idle")
		waitConsole(t, ctx, sb.(*vm), "rehearsed a stage from the disk")
		waitConsole(t, ctx, sb.(*vm), "rehearsed a deploy")
		st := sb.(sandbox.Stager)
		data, dataBytes := artifact(t, 3<<20+5)
		dataPath, err := st.Stage(ctx, data, "after")
		if err != nil {
			t.Fatal(err)
		}
		dep := stageNetprobe(t, ctx, st)
		rehearsed := agentapi.StagedDir + "/nex-rehearsal"
		dep.WorkloadID, dep.Argv = "idle", []string{"sha256/" + dataPath, "sha256/" + rehearsed}
		if r, err := ag.Deploy(ctx, dep, nil); err != nil || !r.OK {
			t.Fatalf("deploy the staged probe: %+v, %v", r, err)
		}
		if err := ag.WaitLog(ctx, "stdout", "probes done"); err != nil {
			t.Fatal(err)
		}
		out := probeSHA256(ag, dataPath, rehearsed)
		got, gotRehearsed := out[0], out[1]
		if !strings.Contains(gotRehearsed, "no such file") {
			t.Fatalf("the rehearsal's file, read in the guest: %q; want it gone", gotRehearsed)
		}
		if sum := sha256.Sum256(dataBytes); got != hex.EncodeToString(sum[:]) {
			t.Fatalf("sha256 of the file staged after the rehearsal = %q, want %x", got, sum)
		}
	})
}

func testStage(t *testing.T, d *Driver) {
	ctx, ag, sb := readyVM(t, d, "stage")
	st, ok := sb.(sandbox.Stager)
	if !ok {
		t.Fatalf("%T does not implement sandbox.Stager", sb)
	}

	// The default guest (128 MiB) cannot hold 96 MiB in its tmpfs.
	big, _ := artifact(t, 96<<20)
	if _, err := st.Stage(ctx, big, "big"); !errors.Is(err, sandbox.ErrNoRoom) || !strings.Contains(err.Error(), "does not fit") ||
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

	dep := stageNetprobe(t, ctx, st)
	aheadFile, _ := artifact(t, 1<<20)
	ahead, err := st.Stage(ctx, aheadFile, "ahead")
	if err != nil {
		t.Fatal(err)
	}
	// A file staged ahead and then replaced in the pool (the node's
	// restage) is deleted by Unstage, before any deploy.
	replaced, err := st.Stage(ctx, aheadFile, "replaced")
	if err != nil {
		t.Fatal(err)
	}
	ps := sb.(sandbox.Prestager)
	for range 2 { // the second finds nothing to delete, and is no error
		if err := ps.Unstage(ctx, "replaced"); err != nil {
			t.Fatal(err)
		}
	}
	// The agent rehearsed a deploy while the files came (agent/rehearse.go):
	// this image's /init ran as a program of its own and exited 0.
	waitConsole(t, ctx, sb.(*vm), "rehearsed a deploy")
	dep.WorkloadID, dep.Unstage = "staged", []string{ahead}
	dep.Argv = []string{"sha256/" + dataPath, "sha256/" + ahead, "sha256/" + replaced}
	if r, err := ag.Deploy(ctx, dep, nil); err != nil || !r.OK {
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
	out := probeSHA256(ag, dataPath, ahead, replaced)
	got, gotAhead, gotReplaced := out[0], out[1], out[2]
	if !strings.Contains(gotAhead, "no such file") {
		t.Fatalf("the file staged ahead and unstaged, read in the guest: %q; want it gone", gotAhead)
	}
	if !strings.Contains(gotReplaced, "no such file") {
		t.Fatalf("the file deleted by Unstage, read in the guest: %q; want it gone", gotReplaced)
	}
	if sum := sha256.Sum256(dataBytes); got != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 of the staged file in the guest = %q, want %x (the host's)", got, sha256.Sum256(dataBytes))
	}
}

// stageNetprobe stages the netprobe program under its hash and returns a
// deploy of it, to be given its ID and arguments.
func stageNetprobe(t *testing.T, ctx context.Context, st sandbox.Stager) agentapi.Deploy {
	t.Helper()
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
	return agentapi.Deploy{Name: "netprobe", Namespace: "default", Type: "native", Hash: hash,
		Size: int64(len(probe)), StagedPath: staged}
}

// probeSHA256 returns what the probe printed for "sha256/<path>", for each
// of paths: a hash, or why it could not read the file.
func probeSHA256(ag *sandboxtest.Agent, paths ...string) []string {
	out := make([]string, len(paths))
	for _, l := range ag.Logs() {
		for i, p := range paths {
			if v, ok := strings.CutPrefix(l.Text, "probe sha256/"+p+" "); ok && l.Stream == "stdout" {
				out[i] = v
			}
		}
	}
	return out
}

// readyVM starts a VM of d for a new agent, named prefix and the test's
// name, and waits for its handshake. The context bounds the test's VM work
// (vmTimeout); it ends, and the VM stops, when the test does.
func readyVM(t *testing.T, d *Driver, prefix string) (context.Context, *sandboxtest.Agent, sandbox.Sandbox) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	t.Cleanup(cancel)
	ag := sandboxtest.NewHarness(t).AddAgent(prefix + strings.ReplaceAll(t.Name(), "/", ""))
	return ctx, ag, startReady(t, ctx, d, ag)
}

// waitConsole waits until the guest's console has a line containing want.
func waitConsole(t testing.TB, ctx context.Context, v *vm, want string) {
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

// TestTrialStartOfAStagedWorkload: a workload staged into an idle VM with
// a trial start (StageTrial, as a node's prestage does) runs once in the
// guest, jailed (internal/trial): the suite's workload, told to echo on a
// subject, connects to the trial's NATS server, answers the request it
// sends, and is ended then, which the console shows. A data file staged
// with a trial start, and a program staged without one, get none. A deploy
// of the staged workload then runs it as usual, with its own arguments
// and output.
func TestTrialStartOfAStagedWorkload(t *testing.T) {
	requireVM(t)
	inColdAndCloned(t, vmSetup(t), func(t *testing.T, d *Driver) {
		ctx, ag, sb := readyVM(t, d, "trial")
		ts := sb.(sandbox.TrialStarter)
		data, _ := artifact(t, 1<<20)
		if _, err := ts.StageTrial(ctx, data, "data", []string{"echo", "x"}); err != nil {
			t.Fatal(err)
		}
		wlPath := sandboxtest.BuildWorkload(t)
		if _, err := sb.(sandbox.Stager).Stage(ctx, wlPath, "plain"); err != nil {
			t.Fatal(err)
		}
		// Out of the guest's RAM (tmpfs) before the next 9 MB: the test's
		// VMs are small.
		for _, name := range []string{"data", "plain"} {
			if err := sb.(sandbox.Prestager).Unstage(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		wl, err := os.ReadFile(wlPath)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(wl)
		hash := hex.EncodeToString(sum[:])
		staged, err := ts.StageTrial(ctx, wlPath, hash, []string{"echo", "svc.trial"})
		if err != nil {
			t.Fatal(err)
		}
		// The whole line: the console file grows as the guest writes it.
		waitConsole(t, ctx, sb.(*vm), `msg="trial start ended`)
		var ended []string
		for len(ended) == 0 && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			console, _ := os.ReadFile(sb.(*vm).path(consoleFile))
			lines := strings.Split(string(console), "\n")
			for _, l := range lines[:len(lines)-1] { // the last is unfinished
				if strings.Contains(l, `msg="trial start`) {
					ended = append(ended, l)
				}
			}
		}
		if len(ended) != 1 || !strings.Contains(ended[0], `msg="trial start ended once its requests were answered"`) ||
			!strings.Contains(ended[0], "file="+hash) || !strings.Contains(ended[0], "requests=1") {
			t.Fatalf("trial starts in the console: %q; want the workload's alone, ended once its request was answered", ended)
		}
		dep := agentapi.Deploy{WorkloadID: "trial", Name: "workload", Namespace: "default", Type: "native",
			Hash: hash, Size: int64(len(wl)), StagedPath: staged, Argv: []string{"exit", "3"}}
		if r, err := ag.Deploy(ctx, dep, nil); err != nil || !r.OK {
			t.Fatalf("deploy the staged workload: %+v, %v", r, err)
		}
		if err := ag.WaitLog(ctx, "stdout", "hello stdout"); err != nil {
			t.Fatal(err)
		}
		ev, err := ag.WaitEvent(ctx, agentapi.EventWorkloadExited)
		if err != nil {
			t.Fatal(err)
		}
		if ev.Code != 3 {
			t.Fatalf("the deployed workload ended %+v, want exit 3", ev)
		}
	})
}
