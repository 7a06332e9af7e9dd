package process_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/process"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// benchAlive is how many idle sandboxes the benchmark keeps running at once,
// so that the memory figures show what agents share (the nex binary's pages)
// as a node with a warm pool would.
const benchAlive = 8

// BenchmarkStartToHandshake measures how long a process sandbox takes from
// Start to its agent's handshake, and the memory of an idle agent:
// MiB-RSS (resident, as ps shows it), MiB-PSS (resident with shared pages
// divided among the agents sharing them: the cost of one more sandbox on a
// node) and MiB-anon (memory no other agent shares).
//
//	go test -run '^$' -bench StartToHandshake -benchtime 40x ./internal/sandbox/process/
func BenchmarkStartToHandshake(b *testing.B) {
	nex := sandboxtest.BuildNex(b)
	h := sandboxtest.NewHarness(b)
	d, err := process.New(process.Config{AgentBinary: nex})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	var alive []sandbox.Sandbox
	defer func() {
		for _, sb := range alive {
			_ = sb.Stop(ctx)
		}
	}()
	var handshake time.Duration
	var n int
	var mem, memN memory
	for b.Loop() {
		n++
		a := h.AddAgent(fmt.Sprintf("bench%d", n))
		start := time.Now()
		sb, err := d.Start(ctx, a.Spec(b.TempDir()))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := a.WaitHandshake(ctx); err != nil {
			b.Fatal(err)
		}
		handshake += a.HandshakeAt().Sub(start)
		// Idle: handshaken and answering pings, nothing deployed.
		if r, err := a.Ping(ctx); err != nil || !r.OK {
			b.Fatalf("ping: %+v %v", r, err)
		}
		alive = append(alive, sb)
		if len(alive) == benchAlive {
			// Measure when the pool is full, so PSS is shared as it would be.
			m, err := readMemory(sb.PID())
			if err != nil {
				b.Fatal(err)
			}
			mem.add(m)
			memN.rss++
			_ = alive[0].Stop(ctx)
			alive = alive[1:]
		}
	}
	b.ReportMetric(float64(handshake.Microseconds())/1000/float64(n), "ms/handshake")
	if memN.rss > 0 {
		k := 1024 * float64(memN.rss)
		b.ReportMetric(float64(mem.rss)/k, "MiB-RSS")
		b.ReportMetric(float64(mem.pss)/k, "MiB-PSS")
		b.ReportMetric(float64(mem.anon)/k, "MiB-anon")
	}
}

// memory of a process in KiB.
type memory struct{ rss, pss, anon int }

func (m *memory) add(o memory) { m.rss += o.rss; m.pss += o.pss; m.anon += o.anon }

func readMemory(pid int) (memory, error) {
	var m memory
	fields := []struct {
		file, key string
		to        *int
	}{
		{"status", "VmRSS:", &m.rss},
		{"status", "RssAnon:", &m.anon},
		{"smaps_rollup", "Pss:", &m.pss},
	}
	for _, f := range fields {
		v, err := procField(pid, f.file, f.key)
		if err != nil {
			return m, err
		}
		*f.to = v
	}
	return m, nil
}

// procField reads a "Key: <n> kB" line of /proc/<pid>/<file>.
func procField(pid int, file, key string) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte(key)); ok {
			return strconv.Atoi(string(bytes.Fields(v)[0]))
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/%s", key, pid, file)
}
