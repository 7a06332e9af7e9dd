package node

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

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
func BenchmarkVMDeployToFirstReply(b *testing.B) {
	if os.Getenv("NEX_VM_TESTS") != "1" {
		b.Skip("microVM benchmark: set NEX_VM_TESTS=1")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		b.Skip("qemu-system-x86_64 is not installed")
	}
	nex, wl := binaries(b)
	img := sandboxtest.GuestImage(b, nex)
	saved := defaultRefillDelay
	defer func() { defaultRefillDelay = saved }()
	for _, run := range []struct {
		snap     bool
		delay    time.Duration
		prestage bool
	}{{false, saved, true}, {true, saved, true}, {true, saved, false}, {true, 50 * time.Millisecond, true}} {
		snap, prestage := run.snap, run.prestage
		defaultRefillDelay = run.delay
		b.Run(fmt.Sprintf("snapshot=%v/refill_delay=%v/prestage=%v", snap, run.delay, prestage), func(b *testing.B) {
			// unix socket paths must fit 108 bytes: keep the state dir short.
			short, err := os.MkdirTemp("", "nexvm")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(short)
			h := newHarnessWithDriver(b, func(c *config.Config) {
				c.DataDir, c.StateDir = short, filepath.Join(short, "state")
				n := 2
				c.MachinePoolSize = &n
				c.HandshakeTimeout = config.Duration(3 * time.Minute)
				c.VMPrestage = &prestage
			}, func(c *config.Config) (driverOf, error) {
				return qemu.New(qemu.Config{Kernel: img.Kernel, Initrd: img.Initrd,
					Snapshot: snap, SnapshotDir: filepath.Join(c.DataDir, "snapshots"), Log: quietLog()})
			})
			defer func() { _ = h.node.Stop(h.ctx()) }()
			data, _ := os.ReadFile(wl)
			hash := h.upload("echo", data)
			var lat, dlat []time.Duration
			for i := 0; i < b.N; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				if err := h.node.pool.Wait(ctx, 2); err != nil {
					b.Fatal(err)
				}
				cancel()
				subject := "vmbench.echo." + strconv.Itoa(i)
				req := h.deployRequest("echo", "echo", hash, nil, "echo", subject)
				start := time.Now()
				run, err := h.deploy(req)
				if err != nil {
					b.Fatal(err)
				}
				dlat = append(dlat, time.Since(start))
				for {
					if m, err := h.nc.Request(subject, nil, 200*time.Millisecond); err == nil && len(m.Data) > 0 {
						break
					}
					if time.Since(start) > time.Minute {
						b.Fatal("no echo from the VM")
					}
					// A pause between "no responders": asking in a tight
					// loop took a host core from the guest (2 cores here)
					// and read ≈ 10–15 % slower.
					time.Sleep(5 * time.Millisecond)
				}
				lat = append(lat, time.Since(start))
				h.node.mu.Lock()
				w := h.node.workloads[run.ID]
				h.node.mu.Unlock()
				h.node.undeploy(h.ctx(), w, "benchmark")
			}
			b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(percentile(dlat, 0.5).Microseconds())/1000, "deploy-p50-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}
