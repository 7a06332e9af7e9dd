package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// BenchmarkVMDeployToFirstReply is BenchmarkDeployToFirstReply with the
// qemu driver: DEPLOY sent → first answer from the echo workload running in
// a warm microVM (TCG here). snapshot=true fills the pool with clones;
// refill_delay is how long the refill a deploy causes is held back (the
// node's default for VM drivers, and the process driver's 50 ms for
// comparison in the same run); prestage is vm_prestage. Every deploy is of
// the same artifact, so with prestage on each after the pool's first two
// VMs (which joined before any deploy) finds it staged ahead. deploy-p50-ms
// is the part until the node's answer to the deploy, which comes once the
// agent has started the workload.
//
// workload=c is the clone pool, staged ahead, with an echo workload in C
// (sandboxtest.BuildCEcho) instead of the Go one: what a deploy costs
// beyond the workload's own start, which for a Go program under TCG is
// tens of milliseconds before main. It needs a C compiler.
//
// trial_start=false is the clone pool, staged ahead, with vm_trial_start
// off: the staged file is not run before its deploy (internal/trial), so
// the deploy's run is the first in that QEMU. Every other case has it on.
//
// pool=idle is the clone pool, staged ahead, with a second's pause before
// each deploy once the pool is full again: the deploy of a node whose
// pool is idle. Every other case deploys as soon as the refilled VM has
// joined the pool, while its trial start runs.
func BenchmarkVMDeployToFirstReply(b *testing.B) {
	img, wl := vmImage(b)
	saved := defaultRefillDelay
	defer func() { defaultRefillDelay = saved }()
	for _, run := range []struct {
		snap     bool
		delay    time.Duration
		prestage bool
		c        bool
		noTrial  bool // vm_trial_start false
		// idle: each deploy waits a second more once the pool is full
		// again, so the refilled VM's stage and trial start are over and
		// the deploy has the host to itself. Without it each deploy comes
		// as the refill's trial start runs, on the same 2 host cores.
		idle bool
	}{{false, saved, true, false, false, false}, {true, saved, true, false, false, false}, {true, saved, false, false, false, false},
		{true, 50 * time.Millisecond, true, false, false, false}, {true, saved, true, true, false, false},
		{true, saved, true, false, true, false}, {true, saved, true, false, false, true}} {
		snap, prestage := run.snap, run.prestage
		defaultRefillDelay = run.delay
		name := fmt.Sprintf("snapshot=%v/refill_delay=%v/prestage=%v", snap, run.delay, prestage)
		if run.c {
			name += "/workload=c"
		}
		if run.noTrial {
			name += "/trial_start=false"
		}
		if run.idle {
			name += "/pool=idle"
		}
		trial := !run.noTrial
		b.Run(name, func(b *testing.B) {
			h := newVMNode(b, img, snap, prestage, func(c *config.Config) { c.VMTrialStart = &trial })
			path := wl
			if run.c {
				path = sandboxtest.BuildCEcho(b)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				b.Fatal(err)
			}
			hash := h.upload("echo", data)
			var lat, dlat []time.Duration
			for i := 0; i < b.N; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				if err := h.node.pool.Wait(ctx, 2); err != nil {
					b.Fatal(err)
				}
				cancel()
				if run.idle {
					time.Sleep(time.Second)
				}
				subject := "vmbench.echo." + strconv.Itoa(i)
				req := h.deployRequest("echo", "echo", hash, nil, "echo", subject)
				start := time.Now()
				run, err := h.deploy(req)
				if err != nil {
					b.Fatal(err)
				}
				dlat = append(dlat, time.Since(start))
				lat = append(lat, firstEcho(b, h, subject, start))
				w := h.workload(run.ID)
				h.node.undeploy(h.ctx(), w, "benchmark")
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(percentile(dlat, 0.5).Microseconds())/1000, "deploy-p50-ms")
			b.ReportMetric(0, "ns/op")
			// Every deploy's figure, in order, so that runs can be pooled:
			// one run's p50 moves by ±10 % or more on this host.
			b.Logf("first echo, ms: %s", msList(lat))
		})
	}
}

// msList formats durations as milliseconds, space-separated.
func msList(ds []time.Duration) string {
	var sb strings.Builder
	for i, d := range ds {
		if i > 0 {
			sb.WriteByte(' ')
		}
		fmt.Fprintf(&sb, "%.1f", float64(d.Microseconds())/1000)
	}
	return sb.String()
}

// vmImage skips tb unless VM tests are on and QEMU is there, and
// returns the guest image of this nex and the echo workload's path.
func vmImage(b testing.TB) (guestimage.Image, string) {
	if os.Getenv("NEX_VM_TESTS") != "1" {
		b.Skip("microVM test: set NEX_VM_TESTS=1")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	nex, wl := binaries(b)
	return sandboxtest.GuestImage(b, nex), wl
}

// newVMNode is a node on the qemu driver with a pool of 2 VMs, stopped
// when b ends; mutate changes its config further.
func newVMNode(b testing.TB, img guestimage.Image, snap, prestage bool, mutate ...func(*config.Config)) *harness {
	// unix socket paths must fit 108 bytes: keep the state dir short.
	short, err := os.MkdirTemp("", "nexvm")
	if err != nil {
		b.Fatal(err)
	}
	h := newHarnessWithDriver(b, func(c *config.Config) {
		c.DataDir, c.StateDir = short, filepath.Join(short, "state")
		n := 2
		c.MachinePoolSize = &n
		c.HandshakeTimeout = config.Duration(3 * time.Minute)
		c.VMPrestage = &prestage
		for _, m := range mutate {
			m(c)
		}
	}, func(c *config.Config) (driverOf, error) {
		return qemu.New(qemu.Config{Kernel: img.Kernel, Initrd: img.Initrd,
			Snapshot: snap, SnapshotDir: filepath.Join(c.DataDir, "snapshots"), Log: quietLog()})
	})
	b.Cleanup(func() {
		_ = h.node.Stop(h.ctx())
		os.RemoveAll(short)
	})
	return h
}

// firstEcho asks the echo workload on subject until it answers and returns
// the time since start.
func firstEcho(b *testing.B, h *harness, subject string, start time.Time) time.Duration {
	b.Helper()
	for {
		if m, err := h.nc.Request(subject, nil, 200*time.Millisecond); err == nil && len(m.Data) > 0 {
			return time.Since(start)
		}
		if time.Since(start) > time.Minute {
			b.Fatal("no echo from the VM")
		}
		// A pause between "no responders": asking in a tight loop took a
		// host core from the guest (2 cores here) and read ≈ 10–15 %
		// slower; asking every millisecond read no sooner than every 5
		// (four rounds alternately, 44 deploys each: median 38.7 against
		// 37.5 ms).
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkVMScaleOut is a new version's rollout, then its scale-out, on a
// clone pool of 2 (qemu, TCG here): each round deploys a new artifact (the
// echo workload with bytes of its own appended), waits 3 s, then deploys
// two more replicas of it back to back. For the rollout's deploy (r0),
// which takes a VM holding the last round's artifact, and each of those
// two (r1, r2): p50 of the first echo (…-p50-ms) and of the node's answer
// to its deploy (…-deploy-p50-ms). A deploy takes a pooled VM that holds its artifact
// first, so r1 always finds one: the refill after the round's first
// deploy. restage=false leaves the VMs waiting in the pool as they joined
// it (node.testNoRestage): the other one joined before the round's first
// deploy and holds the last round's artifact, and r2 stages its own.
func BenchmarkVMScaleOut(b *testing.B) {
	img, wl := vmImage(b)
	data, err := os.ReadFile(wl)
	if err != nil {
		b.Fatal(err)
	}
	for _, restage := range []bool{true, false} {
		b.Run(fmt.Sprintf("restage=%v", restage), func(b *testing.B) {
			h := newVMNode(b, img, true, true)
			h.node.testNoRestage = !restage
			var lat, dlat [3][]time.Duration
			for i := 0; i < b.N; i++ {
				key := fmt.Sprintf("echo%d", i)
				hash := h.upload(key, append(slices.Clone(data), fmt.Sprintf("version %d", i)...))
				var ids []string
				deploy := func(j int) (answer, echo time.Duration) {
					subject := fmt.Sprintf("vmbench.scale.%d.%d", i, j)
					start := time.Now()
					run, err := h.deploy(h.deployRequest("echo", key, hash, nil, "echo", subject))
					if err != nil {
						b.Fatal(err)
					}
					ids = append(ids, run.ID)
					return time.Since(start), firstEcho(b, h, subject, start)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				if err := h.node.pool.Wait(ctx, 2); err != nil {
					b.Fatal(err)
				}
				d, l := deploy(0)
				dlat[0], lat[0] = append(dlat[0], d), append(lat[0], l)
				time.Sleep(3 * time.Second)
				if err := h.node.pool.Wait(ctx, 2); err != nil {
					b.Fatal(err)
				}
				cancel()
				for j := 1; j <= 2; j++ {
					d, l := deploy(j)
					dlat[j], lat[j] = append(dlat[j], d), append(lat[j], l)
				}
				for _, id := range ids {
					w := h.workload(id)
					h.node.undeploy(h.ctx(), w, "benchmark")
				}
			}
			for j := range lat {
				b.ReportMetric(float64(percentile(lat[j], 0.5).Microseconds())/1000, fmt.Sprintf("r%d-p50-ms", j))
				b.ReportMetric(float64(percentile(dlat[j], 0.5).Microseconds())/1000, fmt.Sprintf("r%d-deploy-p50-ms", j))
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}
