package node

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
)

func percentile(d []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkDeployToFirstReply measures DEPLOY sent → first answer from the
// deployed echo service, with a warm pool (the process driver). Each
// iteration deploys, waits for the echo, then stops the workload and lets
// the pool refill outside the timed part. Reports p50/p99 in ms, once with
// the refill a deploy causes started at once and once with the node's
// refill delay, in the same run.
func BenchmarkDeployToFirstReply(b *testing.B) {
	nex, _ := binaries(b)
	drv, err := process.New(process.Config{AgentBinary: nex, Log: quietLog()})
	if err != nil {
		b.Fatal(err)
	}
	for _, d := range []time.Duration{0, drv.RefillDelay()} {
		b.Run("refill_delay="+d.String(), func(b *testing.B) { benchmarkDeployToFirstReply(b, d) })
	}
}

// pacedDriver is a driver whose refill delay the benchmark sets.
type pacedDriver struct {
	sandbox.Driver
	delay time.Duration
}

func (p pacedDriver) RefillDelay() time.Duration { return p.delay }

func benchmarkDeployToFirstReply(b *testing.B, refill time.Duration) {
	nex, _ := binaries(b)
	h := newHarnessWithDriver(b, func(c *config.Config) {
		n := 4
		c.MachinePoolSize = &n
	}, func(*config.Config) (driverOf, error) {
		drv, err := process.New(process.Config{AgentBinary: nex, Log: quietLog()})
		return pacedDriver{drv, refill}, err
	})
	defer func() { _ = h.node.Stop(h.ctx()) }()
	_, wl := binaries(b)
	data, _ := os.ReadFile(wl)
	hash := h.upload("echo", data)
	var lat []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		if err := h.node.pool.Wait(h.ctx(), 4); err != nil {
			b.Fatal(err)
		}
		subject := "bench.echo." + strconv.Itoa(i)
		req := h.deployRequest("echo", "echo", hash, nil, "echo", subject)
		b.StartTimer()
		start := time.Now()
		run, err := h.deploy(req)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if m, err := h.nc.Request(subject, nil, 50*time.Millisecond); err == nil && len(m.Data) > 0 {
				break
			}
			if time.Since(start) > 30*time.Second {
				b.Fatal("no echo")
			}
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		// Stop inside the node: a stop JWT must not share the deploy's iat
		// second (PROTOCOL.md), and the stop is not what is measured.
		w := h.workload(run.ID)
		h.node.undeploy(h.ctx(), w, "benchmark")
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(lat, 0.5).Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(percentile(lat, 0.99).Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkPoolRefill measures how fast an empty pool of the process driver
// fills to its target (sandboxes/s), and the RSS of an idle agent.
func BenchmarkPoolRefill(b *testing.B) {
	const target = 20
	var rates []float64
	var rss []int
	for i := 0; i < b.N; i++ {
		zero := 0
		h := newHarness(b, func(c *config.Config) { c.MachinePoolSize = &zero })
		h.node.pool.SetTarget(target)
		start := time.Now()
		if err := h.node.pool.Wait(h.ctx(), target); err != nil {
			b.Fatal(err)
		}
		rates = append(rates, target/time.Since(start).Seconds())
		h.node.mu.Lock()
		for _, s := range h.node.sandboxes {
			rss = append(rss, vmRSSKiB(s.sb.PID()))
		}
		h.node.mu.Unlock()
		_ = h.node.Stop(h.ctx())
	}
	sort.Float64s(rates)
	sort.Ints(rss)
	b.ReportMetric(rates[len(rates)/2], "sandboxes/s")
	b.ReportMetric(float64(rss[len(rss)/2])/1024, "idle-agent-RSS-MiB")
	b.ReportMetric(0, "ns/op")
}

func vmRSSKiB(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			v, _ := strconv.Atoi(f[1])
			return v
		}
	}
	return 0
}
