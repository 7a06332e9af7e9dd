package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// Benchmarks of the QEMU driver (NEX_VM_TESTS=1):
//
//	NEX_VM_TESTS=1 go test ./internal/sandbox/qemu -run '^$' -bench . -benchtime 5x
//
// The boot benchmarks report ms from Start to the agent's handshake on the
// internal NATS ("ms/handshake") and to the guest having its config
// ("ms/config": what the VMM and kernel take; the rest is the guest's agent
// starting and connecting); BenchmarkIdleMemory the host memory of an idle
// VM's QEMU process; BenchmarkDeployEcho where a warm deploy's time goes.

type benchVM struct {
	a  *sandboxtest.Agent
	sb sandbox.Sandbox
}

// bootToHandshake starts n sandboxes at once and returns them once every
// agent has handshaken, with the time that took and the time until the
// last guest had its config (the VMM's and kernel's share).
func bootToHandshake(b *testing.B, d *Driver, h *sandboxtest.Harness, n int) ([]benchVM, time.Duration, time.Duration) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	vms := make([]benchVM, n)
	errs := make([]error, n)
	for i := range vms {
		vms[i].a = h.AddAgent(fmt.Sprintf("bench%d", benchSeq.Add(1)))
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var configured time.Duration
	for i := range vms {
		wg.Go(func() {
			spec := vms[i].a.Spec(b.TempDir())
			spec.MemoryMiB = config.DefaultMemMiB // the node's default shape
			if vms[i].sb, errs[i] = d.Start(ctx, spec); errs[i] != nil {
				return
			}
			vms[i].a.Watch(vms[i].sb)
			select {
			case <-vms[i].sb.(*vm).configured:
				mu.Lock()
				configured = max(configured, time.Since(t0))
				mu.Unlock()
			case <-vms[i].sb.Done(): // WaitHandshake says how it ended
			case <-ctx.Done():
			}
			_, errs[i] = vms[i].a.WaitHandshake(ctx)
		})
	}
	wg.Wait()
	took := time.Since(t0)
	for i, err := range errs {
		if err != nil {
			stopAll(vms)
			b.Fatalf("vm %d: %v", i, err)
		}
	}
	return vms, took, configured
}

func stopAll(vms []benchVM) {
	var wg sync.WaitGroup
	for _, v := range vms {
		if v.sb != nil {
			wg.Go(func() { _ = v.sb.Stop(context.Background()) })
		}
	}
	wg.Wait()
}

var benchSeq atomic.Int64

func benchDriver(b *testing.B, snapshot bool) *Driver {
	requireVM(b)
	a := vmSetup(b)
	d := a.driver(b, func(c *Config) {
		c.Log = slog.New(slog.DiscardHandler) // keep benchmark output to the table
		c.Snapshot, c.SnapshotDir = snapshot, b.TempDir()
	})
	if snapshot {
		if err := d.Prepare(context.Background(), Shape{VCPU: 1, MemoryMiB: config.DefaultMemMiB}); err != nil {
			b.Fatal(err)
		}
	}
	return d
}

func benchBoot(b *testing.B, snapshot bool, n int) {
	d := benchDriver(b, snapshot)
	h := sandboxtest.NewHarness(b)
	var total, configured time.Duration
	b.ResetTimer()
	for range b.N {
		vms, took, conf := bootToHandshake(b, d, h, n)
		total += took
		configured += conf
		b.StopTimer()
		stopAll(vms)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/handshake")
	b.ReportMetric(float64(configured.Milliseconds())/float64(b.N), "ms/config")
}

// BenchmarkColdBoot: QEMU start → kernel → /init → config → agent handshake.
func BenchmarkColdBoot(b *testing.B) { benchBoot(b, false, 1) }

// BenchmarkCloneRestore: QEMU start → snapshot loaded → config → agent
// handshake (the template is made before the clock starts).
func BenchmarkCloneRestore(b *testing.B) { benchBoot(b, true, 1) }

// BenchmarkColdBootTwoAtOnce: two cold boots at the same time, until both
// have handshaken.
func BenchmarkColdBootTwoAtOnce(b *testing.B) { benchBoot(b, false, 2) }

// BenchmarkCloneRestoreTwoAtOnce: two clones at the same time.
func BenchmarkCloneRestoreTwoAtOnce(b *testing.B) { benchBoot(b, true, 2) }

// BenchmarkIdleMemory reports the host memory of idle VMs, two at a time so
// the sharing of clones shows: RSS counts the template's RAM file pages in
// every clone, PSS divides them among the clones. A VM's figure is its QEMU
// process and any other host process it holds (helpers/vm: a guest
// forward command that stays for its connection's life).
func BenchmarkIdleMemory(b *testing.B) {
	for _, mode := range []struct {
		name     string
		snapshot bool
	}{{"cold", false}, {"clone", true}} {
		b.Run(mode.name, func(b *testing.B) {
			d := benchDriver(b, mode.snapshot)
			h := sandboxtest.NewHarness(b)
			var rss, pss, helpers float64
			for range b.N {
				vms, _, _ := bootToHandshake(b, d, h, 2)
				// Idle: let the agents settle after their handshake.
				<-time.After(2 * time.Second)
				for _, v := range vms {
					r, p := procMemKiB(b, v.sb.PID())
					rss += float64(r) / 1024
					pss += float64(p) / 1024
					for _, pid := range helperPIDs(v.sb.(*vm)) {
						r, p := procMemKiB(b, pid)
						rss += float64(r) / 1024
						pss += float64(p) / 1024
						helpers++
					}
				}
				stopAll(vms)
			}
			b.ReportMetric(rss/float64(2*b.N), "MiB-RSS/vm")
			b.ReportMetric(pss/float64(2*b.N), "MiB-PSS/vm")
			b.ReportMetric(helpers/float64(2*b.N), "helpers/vm")
		})
	}
}

// helperPIDs are the host processes other than QEMU that a VM holds: the
// ones running in its directory, QEMU's working directory, which the
// commands QEMU starts (its guest forwards) inherit.
func helperPIDs(v *vm) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, err := strconv.Atoi(filepath.Base(p))
		if err != nil || pid == v.PID() {
			continue
		}
		if cwd, err := os.Readlink(p + "/cwd"); err == nil && cwd == v.dir {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procMemKiB reads a process's RSS and PSS in KiB.
func procMemKiB(b *testing.B, pid int) (rss, pss int) {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.Atoi(fields[1])
		switch fields[0] {
		case "Rss:":
			rss = v
		case "Pss:":
			pss = v
		}
	}
	return rss, pss
}

// BenchmarkDeployEcho splits a deploy into a warm VM (a snapshot clone that
// has handshaken) into its parts, with the artifact (the suite's 9 MB Go
// echo workload) streamed over NATS by the agent (stream), or staged first
// through the stage disk (stage) or in the file port's frames (stage-port):
//
//   - ms/stage: Stage, host → guest tmpfs (0 when streaming);
//   - ms/deploy: the deploy request until the agent's answer, which comes
//     once it has the file (fetched and hashed, or renamed) and has started
//     the process;
//   - ms/first-line: from there to the workload's first line of output,
//     printed before it connects: the Go runtime's and its packages' start
//     under emulation, and the line's way out through the agent;
//   - ms/first-reply: from there to the first echo answer: the Go
//     workload's own start under emulation, its NATS connection through the
//     agent's forwarder, its subscription;
//   - ms/total: the sum.
//
// Each is the median of b.N deploys, each into a fresh clone.
func BenchmarkDeployEcho(b *testing.B) {
	for _, mode := range []string{"stream", "stage", "stage-port"} {
		b.Run(mode, func(b *testing.B) {
			d := benchDriver(b, true)
			h := sandboxtest.NewHarness(b)
			wlPath := sandboxtest.BuildWorkload(b)
			wl, err := os.ReadFile(wlPath)
			if err != nil {
				b.Fatal(err)
			}
			sum := sha256.Sum256(wl)
			hash := hex.EncodeToString(sum[:])
			var stage, deploy, hello, first, total []time.Duration
			for range b.N {
				s, dp, hi, f := deployEchoOnce(b, d, h, wlPath, wl, hash, mode)
				stage, deploy, first, total = append(stage, s), append(deploy, dp), append(first, f), append(total, s+dp+f)
				hello = append(hello, hi)
			}
			for _, m := range []struct {
				unit string
				d    []time.Duration
			}{{"ms/stage", stage}, {"ms/deploy", deploy}, {"ms/first-line", hello}, {"ms/first-reply", first}, {"ms/total", total}} {
				b.ReportMetric(float64(median(m.d).Microseconds())/1000, m.unit)
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

func deployEchoOnce(b *testing.B, d *Driver, h *sandboxtest.Harness, wlPath string, wl []byte, hash, mode string) (time.Duration, time.Duration, time.Duration, time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	vms, _, _ := bootToHandshake(b, d, h, 1)
	defer stopAll(vms)
	ag, sb := vms[0].a, vms[0].sb
	id := "wl-" + ag.ID
	user, pass := h.Server.AddWorkloadUser(id)
	defer h.Server.RemoveWorkloadUser(id)
	cu, cp := h.Server.AddWorkloadUser("client-" + ag.ID)
	defer h.Server.RemoveWorkloadUser("client-" + ag.ID)
	client, err := nats.Connect(h.Server.ClientURL(), nats.UserInfo(cu, cp))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	subject := "echo." + ag.ID
	dep := agentapi.Deploy{WorkloadID: id, Name: "echo", Namespace: "default", Type: "native",
		Argv: []string{"echo", subject}, Hash: hash, Size: int64(len(wl)), NATSUser: user, NATSPassword: pass}
	artifact := wl

	stage := mode != "stream"
	sb.(*vm).files.noDisk = mode == "stage-port"
	t0 := time.Now()
	if stage {
		if dep.StagedPath, err = sb.(sandbox.Stager).Stage(context.Background(), wlPath, hash); err != nil {
			b.Fatal(err)
		}
		artifact = nil // a fetch over NATS would fail the deploy
	}
	t1 := time.Now()
	if r, err := ag.Deploy(ctx, dep, artifact); err != nil || !r.OK {
		b.Fatalf("deploy: %+v, %v", r, err)
	}
	t2 := time.Now()
	// Its first line, printed before its NATS connection: the Go
	// runtime's and the packages' start, and the line's way out.
	if err := ag.WaitLog(ctx, "stdout", "hello stdout"); err != nil {
		b.Fatal(err)
	}
	firstLine := time.Since(t2)
	// The workload says "ready" once subscribed; waiting for that line
	// rather than retrying requests keeps the host's CPU off the guest's.
	if err := ag.WaitLog(ctx, "stdout", "ready"); err != nil {
		b.Fatal(err)
	}
	if m, err := client.RequestWithContext(ctx, subject, []byte("hi")); err != nil || string(m.Data) != "echo: hi" {
		b.Fatalf("echo: %v, %v", m, err)
	}
	return t1.Sub(t0), t2.Sub(t1), firstLine, time.Since(t2)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkStage pushes the suite's 9 MB workload into one warm clone over
// the file port, b.N times under one name (each replaces the last, so guest
// RAM holds one copy): the median ms per file and MB/s.
//
// Sub-benchmarks: disk, the file through the stage disk; port, its bytes in
// the port's frames (as for a guest without virtio_blk).
func BenchmarkStage(b *testing.B) {
	for _, mode := range fileModes {
		b.Run(mode.name, func(b *testing.B) { benchStage(b, mode.disk) })
	}
}

func benchStage(b *testing.B, disk bool) {
	d := benchDriver(b, true)
	h := sandboxtest.NewHarness(b)
	wl := sandboxtest.BuildWorkload(b)
	st, err := os.Stat(wl)
	if err != nil {
		b.Fatal(err)
	}
	vms, _, _ := bootToHandshake(b, d, h, 1)
	defer stopAll(vms)
	vms[0].sb.(*vm).files.noDisk = !disk
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		if _, err := vms[0].sb.(sandbox.Stager).Stage(context.Background(), wl, "bench"); err != nil {
			b.Fatal(err)
		}
		took = append(took, time.Since(t0))
	}
	b.StopTimer()
	m := median(took)
	b.ReportMetric(float64(m.Microseconds())/1000, "ms/stage")
	b.ReportMetric(float64(st.Size())/1e6/m.Seconds(), "MB/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkStageIdle: a file (the echo workload, 9 MB) staged into a clone
// that has waited idle since its handshake (rehearsed), then the same file
// again under another name. The first is what a deploy of an artifact not
// staged ahead waits for.
func BenchmarkStageIdle(b *testing.B) {
	d := benchDriver(b, true)
	h := sandboxtest.NewHarness(b)
	wlPath := sandboxtest.BuildWorkload(b)
	var first, second []time.Duration
	for range b.N {
		vms, _, _ := bootToHandshake(b, d, h, 1)
		waitConsole(b, b.Context(), vms[0].sb.(*vm), "rehearsed a deploy")
		st := vms[0].sb.(sandbox.Stager)
		t0 := time.Now()
		if _, err := st.Stage(b.Context(), wlPath, "first"); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := st.Stage(b.Context(), wlPath, "second"); err != nil {
			b.Fatal(err)
		}
		first, second = append(first, t1.Sub(t0)), append(second, time.Since(t1))
		b.StopTimer()
		stopAll(vms)
		b.StartTimer()
	}
	b.ReportMetric(float64(median(first).Microseconds())/1000, "ms/first")
	b.ReportMetric(float64(median(second).Microseconds())/1000, "ms/second")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkRestageMemory is a clone that waits in a node's pool while new
// versions are deployed: the echo workload (9 MB) is staged into it, then
// replaced 8 times (Unstage, then Stage of the next version, as the node's
// restage does). It reports the QEMU process's RSS once the first file is
// in and after the last replacement: a guest that put each version in
// pages it had not used before would grow by 9 MB each time.
func BenchmarkRestageMemory(b *testing.B) {
	d := benchDriver(b, true)
	h := sandboxtest.NewHarness(b)
	wlPath := sandboxtest.BuildWorkload(b)
	var first, last float64
	for range b.N {
		vms, _, _ := bootToHandshake(b, d, h, 1)
		waitConsole(b, b.Context(), vms[0].sb.(*vm), "rehearsed a deploy")
		ps := vms[0].sb.(sandbox.Prestager)
		name := func(i int) string { return fmt.Sprintf("version-%d", i) }
		if _, err := ps.Stage(b.Context(), wlPath, name(0)); err != nil {
			b.Fatal(err)
		}
		r, _ := procMemKiB(b, vms[0].sb.PID())
		first += float64(r) / 1024
		for i := 1; i <= 8; i++ {
			if err := ps.Unstage(b.Context(), name(i-1)); err != nil {
				b.Fatal(err)
			}
			if _, err := ps.Stage(b.Context(), wlPath, name(i)); err != nil {
				b.Fatal(err)
			}
		}
		r, _ = procMemKiB(b, vms[0].sb.PID())
		last += float64(r) / 1024
		stopAll(vms)
	}
	b.ReportMetric(first/float64(b.N), "MiB-RSS-first")
	b.ReportMetric(last/float64(b.N), "MiB-RSS-after-8")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkTrialStartMemory is what a trial start (internal/trial) costs an
// idle clone in host memory: the echo workload (9 MB) is staged into a
// fresh clone with a trial start (told to echo on a subject, as a node's
// prestage passes its last deploy's arguments) or without one, and the
// QEMU process's RSS is read once the trial has ended (or, without one,
// 2 s after the stage).
func BenchmarkTrialStartMemory(b *testing.B) {
	d := benchDriver(b, true)
	h := sandboxtest.NewHarness(b)
	wlPath := sandboxtest.BuildWorkload(b)
	for _, trial := range []bool{false, true} {
		b.Run(fmt.Sprintf("trial=%v", trial), func(b *testing.B) {
			var rss float64
			for range b.N {
				vms, _, _ := bootToHandshake(b, d, h, 1)
				v := vms[0].sb.(*vm)
				waitConsole(b, b.Context(), v, "rehearsed a deploy")
				var err error
				if trial {
					_, err = v.StageTrial(b.Context(), wlPath, "wl", []string{"echo", "bench.trial"})
				} else {
					_, err = v.Stage(b.Context(), wlPath, "wl")
				}
				if err != nil {
					b.Fatal(err)
				}
				if trial {
					waitConsole(b, b.Context(), v, `msg="trial start ended`)
				} else {
					time.Sleep(2 * time.Second)
				}
				r, _ := procMemKiB(b, v.PID())
				rss += float64(r) / 1024
				stopAll(vms)
			}
			b.ReportMetric(rss/float64(b.N), "MiB-RSS")
			b.ReportMetric(0, "ns/op")
		})
	}
}
