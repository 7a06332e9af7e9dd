package qemu

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// TestGuestClocksource: a guest keeps time with its CPU's clock, the TSC
// under TCG (kvm-clock under KVM), not by counting timer ticks. Under TCG
// the kernel checked the TSC against the ticks, and when ticks came late
// on a busy host it called the TSC unstable and fell back to
// refined-jiffies: ticks that came late were then time lost, and a guest
// fell behind by 1 s in 95 s while the host compiled a kernel.
// tsc=reliable on the command line keeps the TSC (tcgCmdline). The test
// makes ticks late for sure: for 4 s it stops QEMU (SIGSTOP) 100 ms out of
// every 200, as a busy host would, then has the workload say which clock
// the guest keeps, and what time it is. Without tsc=reliable, nex's kernel
// gave up the TSC every time, Debian's in the clone.
func TestGuestClocksource(t *testing.T) {
	vmWithWorkload(t, "clock", nil, func(t *testing.T, ctx context.Context, d *Driver, ag *sandboxtest.Agent, sb sandbox.Sandbox, wl []byte) {
		for range 20 { // half the CPU it wants, for 4 s
			if err := syscall.Kill(sb.PID(), syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			if err := syscall.Kill(sb.PID(), syscall.SIGCONT); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		before := time.Now()
		deployWorkload(t, ctx, ag, wl, "clock", "1")
		want := "tsc"
		if d.accel.Accel == accel.KVM {
			want = "kvm-clock"
		}
		// The guest's clock and its time, read after the deploy was sent and
		// before the line came, by the host's clock: a guest that lost time
		// is outside, one that kept the TSC a few ms at most.
		var src string
		var guest time.Time
		for src == "" || guest.IsZero() {
			for _, l := range ag.Logs() {
				if v, ok := strings.CutPrefix(l.Text, "clocksource "); ok {
					src = v
				}
				if v, ok := strings.CutPrefix(l.Text, "now "); ok {
					ns, _ := strconv.ParseInt(v, 10, 64)
					guest = time.Unix(0, ns)
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("the workload did not say it: %+v", ag.Logs())
			}
			time.Sleep(10 * time.Millisecond)
		}
		after := time.Now()
		if src != want {
			t.Fatalf("the guest's clocksource is %s; want %s", src, want)
		}
		if guest.Before(before.Add(-time.Second)) || guest.After(after.Add(time.Second)) {
			t.Fatalf("the guest's time was %s, the host's between %s and %s",
				guest.Format(time.StampMicro), before.Format(time.StampMicro), after.Format(time.StampMicro))
		}
	})
}

// BenchmarkGuestClock runs the suite's workload in a clone for 30 s,
// printing the guest's time once a second, and compares each with the
// host's when it arrives: the offset at the start (median of the first 3;
// negative is behind, and includes the line's way out of the guest), at
// the end, and the drift between them in ms per minute. Run it on a busy
// host too, where a tick-counting clock falls behind:
//
//	NEX_VM_TESTS=1 go test ./internal/sandbox/qemu -run '^$' -bench GuestClock -benchtime 1x
func BenchmarkGuestClock(b *testing.B) {
	const lines = 30
	d := benchDriver(b, true)
	h := sandboxtest.NewHarness(b)
	wl, err := os.ReadFile(sandboxtest.BuildWorkload(b))
	if err != nil {
		b.Fatal(err)
	}
	var first, last, drift []float64
	for range b.N {
		ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
		vms, _, _ := bootToHandshake(b, d, h, 1)
		ag := vms[0].a
		var mu sync.Mutex
		var offsets []time.Duration // guest − host, per line
		sub, err := h.Node.Subscribe(agentapi.LogsSubject(ag.ID), func(m *nats.Msg) {
			at := time.Now()
			var l agentapi.LogLine
			if json.Unmarshal(m.Data, &l) != nil {
				return
			}
			if s, ok := strings.CutPrefix(l.Text, "now "); ok {
				if ns, err := strconv.ParseInt(s, 10, 64); err == nil {
					mu.Lock()
					offsets = append(offsets, time.Unix(0, ns).Sub(at))
					mu.Unlock()
				}
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		if err := h.Node.Flush(); err != nil {
			b.Fatal(err)
		}
		deployWorkload(b, ctx, ag, wl, "clock", strconv.Itoa(lines))
		if _, err := ag.WaitEvent(ctx, agentapi.EventWorkloadExited); err != nil {
			b.Fatal(err)
		}
		// The exit event comes on another subscription: the last line may
		// still be on its way to this one's handler.
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			mu.Lock()
			n := len(offsets)
			mu.Unlock()
			if n >= lines {
				break
			}
		}
		_ = sub.Unsubscribe()
		stopAll(vms)
		cancel()
		mu.Lock()
		o := slices.Clone(offsets)
		mu.Unlock()
		if len(o) < lines {
			b.Fatalf("%d of %d lines arrived", len(o), lines)
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		f, l := ms(median(o[:3])), ms(median(o[len(o)-3:]))
		first, last = append(first, f), append(last, l)
		drift = append(drift, (l-f)/(float64(lines-1)/60))
	}
	mid := func(v []float64) float64 { s := slices.Clone(v); slices.Sort(s); return s[len(s)/2] }
	b.ReportMetric(mid(first), "ms-offset-start")
	b.ReportMetric(mid(last), "ms-offset-end")
	b.ReportMetric(mid(drift), "ms-drift/min")
	b.ReportMetric(0, "ns/op")
}
