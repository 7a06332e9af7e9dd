package vminit_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agent/vminit"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// The boot proof: a real guest image (Debian's cloud kernel, a freshly built
// static nex as /init) boots under QEMU TCG, takes its identity over the
// config port, and its agent handshakes on the node's internal NATS through
// QEMU's guestfwd.

func requireVM(tb testing.TB) string {
	tb.Helper()
	if os.Getenv("NEX_VM_TESTS") != "1" {
		tb.Skip("boots a QEMU microVM (slow): set NEX_VM_TESTS=1 to run")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		tb.Skip("qemu-system-x86_64 not found: install the Debian package qemu-system-x86 to run VM tests")
	}
	return qemu
}

// buildImage builds a static nex and the guest image around it, on Debian's
// cloud kernel or the one NEX_GUEST_KERNEL names. Kernel packages are kept
// in the user's cache between runs.
func buildImage(tb testing.TB) guestimage.Image {
	tb.Helper()
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		tb.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(tb.TempDir(), "nex")
	build := exec.Command("go", "build", "-o", bin, "./cmd/nex")
	build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		tb.Fatalf("build static nex: %v\n%s", err, out)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	img, err := guestimage.Build(context.Background(), guestimage.Options{
		CacheDir:   tb.TempDir(),
		PackageDir: filepath.Join(cache, "nex-vmtest", "pkgs"),
		Agent:      bin,
		Kernel:     os.Getenv(sandboxtest.EnvGuestKernel),
		Progress:   func(s string) { tb.Log("image:", s) },
	})
	if err != nil {
		tb.Fatalf("build guest image: %v", err)
	}
	return img
}

// hostTSCkHz is what the guest must be told its TSC runs at: under TCG the
// guest's TSC is the host's.
func hostTSCkHz(tb testing.TB) int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(mhz * 1000)
			}
		}
	}
	tb.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

type node struct {
	in *natsd.Internal
	nc *nats.Conn
}

func startNode(tb testing.TB) node {
	tb.Helper()
	in, err := natsd.StartInternal(natsd.InternalOptions{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(in.Shutdown)
	nc, err := in.ConnectNode("vmtest")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	return node{in: in, nc: nc}
}

// guest is one booted VM.
type guest struct {
	id        string
	cmd       *exec.Cmd
	exited    chan error
	handshake agentapi.Handshake
	took      time.Duration // QEMU start → handshake request received
	cmdline   []string
	console   *consoleLog
}

// boot starts QEMU with the image and waits for the agent's handshake.
func boot(tb testing.TB, qemuBin string, img guestimage.Image, n node, id string, viaCmdline bool) *guest {
	tb.Helper()
	seed, err := n.in.AddAgent(id)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { n.in.RemoveAgent(id) })
	u, _ := url.Parse(n.in.ClientURL())
	_, natsPort, _ := net.SplitHostPort(u.Host)

	hs := make(chan agentapi.Handshake, 1)
	sub, err := n.nc.Subscribe(agentapi.HandshakeSubject(id), func(m *nats.Msg) {
		var h agentapi.Handshake
		_ = json.Unmarshal(m.Data, &h)
		select {
		case hs <- h:
		default:
		}
		b, _ := json.Marshal(agentapi.HandshakeReply{OK: true, Now: time.Now(), Entropy: random(32)})
		_ = m.Respond(b)
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { sub.Unsubscribe() })

	meta := agentapi.Metadata{SandboxID: id, NATSURL: "nats://" + agentapi.GuestNATSAddr, Seed: seed}
	// The options the QEMU driver gives a one-vCPU TCG guest (see
	// internal/sandbox/qemu/args.go for why each is there).
	cmdline := fmt.Sprintf("console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=%d cryptomgr.notests "+
		"initcall_blacklist=init_kprobe_trace mitigations=off nokaslr noreplace-smp%s", hostTSCkHz(tb), debugArg())
	args := []string{
		// RDRAND lets the guest kernel's CRNG be ready at once: without it
		// the first getrandom (crypto/rand, in nats.go's package init) waits
		// ≈ 1 s under TCG for the kernel to gather jitter entropy.
		// A kernel that finds its devices on the command line boots without
		// ACPI, as the driver runs it.
		"-M", qemu.MicrovmMachine(img.Kernel), "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "128", "-smp", "1",
		"-nographic", "-nodefaults", "-no-user-config", "-serial", "stdio", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", img.Initrd,
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,guestfwd=tcp:%s-cmd:%s %s 127.0.0.1:%s",
			agentapi.GuestNATSAddr, self(tb), vminit.ForwardArg, natsPort),
		"-device", "virtio-net-device,netdev=n0",
	}
	// The driver's firmware too (qemu.Firmware): QEMU 10's default, SeaBIOS,
	// resets about half of the guests at boot.
	if fw := qemu.FindFirmware(context.Background(), qemuBin, qemu.Firmware); fw != "" {
		args = append(args, "-bios", fw)
	}
	cfgErr := make(chan error, 1)
	if viaCmdline {
		// Firecracker's way: no virtio-serial, metadata on the command line.
		args = append(args, "-append", cmdline+" "+meta.KernelArgs())
	} else {
		// The host listens on the config socket; QEMU (server=off) dials it.
		sock := filepath.Join(tb.TempDir(), "config.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { ln.Close() })
		go func() { cfgErr <- answerConfig(ln, meta) }()
		args = append(args,
			"-append", cmdline,
			"-device", "virtio-serial-device",
			"-chardev", fmt.Sprintf("socket,path=%s,server=off,id=c0", sock),
			"-device", "virtserialport,chardev=c0,name="+agentapi.ConfigPortName,
		)
	}
	g := &guest{id: id, exited: make(chan error, 1), cmdline: append([]string{qemuBin}, args...)}
	g.cmd = exec.Command(qemuBin, args...)
	// A test killed mid-boot must not leave its VM running.
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	g.console = &consoleLog{tb: tb, start: start}
	g.cmd.Stdout, g.cmd.Stderr = g.console, g.console
	// Wait returns once the console is read to its end, unless something
	// QEMU started holds it open.
	g.cmd.WaitDelay = 5 * time.Second
	if err := g.cmd.Start(); err != nil {
		tb.Fatalf("start qemu: %v", err)
	}
	tb.Cleanup(func() {
		select {
		case <-g.exited:
		default:
			_ = g.cmd.Process.Kill() // only the QEMU this test started
			<-g.exited
		}
	})
	go func() { g.exited <- g.cmd.Wait() }()

	timeout := time.NewTimer(2 * time.Minute)
	defer timeout.Stop()
	for {
		select {
		case h := <-hs:
			g.took, g.handshake = time.Since(start), h
			return g
		case err := <-cfgErr:
			if err != nil {
				tb.Fatalf("config channel: %v", err)
			}
			cfgErr = nil
		case err := <-g.exited:
			g.exited <- err
			tb.Fatalf("qemu exited before the handshake: %v", err)
		case <-timeout.C:
			tb.Fatal("no handshake from the guest within 2 minutes")
		}
	}
}

func self(tb testing.TB) string {
	exe, err := os.Executable()
	if err != nil || strings.ContainsAny(exe, " ,'\"") {
		tb.Skipf("test binary path %q cannot go in a QEMU guestfwd command", exe)
	}
	return exe
}

// answerConfig is the host's side of the config channel.
func answerConfig(ln net.Listener, meta agentapi.Metadata) error {
	c, err := ln.Accept()
	if err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	// The connection stays open, as a node keeps it for the VM's life; it
	// ends with the listener's cleanup.
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read ready line: %w", err)
	}
	if strings.TrimSpace(line) != agentapi.ReadyLine {
		return fmt.Errorf("guest said %q, want %q", line, agentapi.ReadyLine)
	}
	return json.NewEncoder(c).Encode(agentapi.VMConfig{Metadata: meta, Now: time.Now(), Entropy: random(64)})
}

// consoleLog is the guest's console (QEMU's stdout and stderr): each line
// goes to the test's log and is kept for has.
type consoleLog struct {
	tb    testing.TB
	start time.Time
	mu    sync.Mutex
	part  []byte
	lines []string
}

func (c *consoleLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.part = append(c.part, p...)
	for {
		i := bytes.IndexByte(c.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(c.part[:i]), "\r")
		c.part = c.part[i+1:]
		c.lines = append(c.lines, line)
		c.tb.Logf("console %6d ms: %s", time.Since(c.start).Milliseconds(), line)
	}
}

// has reports whether a whole line of the console so far contains s.
func (c *consoleLog) has(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.ContainsFunc(c.lines, func(l string) bool { return strings.Contains(l, s) })
}

// debugArg turns on the guest's debug logs when the test runs with
// NEX_VM_DEBUG=1.
func debugArg() string {
	if os.Getenv("NEX_VM_DEBUG") == "1" {
		return " nex_debug=1"
	}
	return ""
}

func random(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// waitExit waits for the guest to power itself off.
func (g *guest) waitExit(tb testing.TB, within time.Duration) {
	tb.Helper()
	select {
	case err := <-g.exited:
		g.exited <- err
		if err != nil {
			tb.Fatalf("qemu ended with %v, want a clean power off", err)
		}
	case <-time.After(within):
		tb.Fatalf("guest did not power off within %s", within)
	}
}

func TestBootHandshake(t *testing.T) {
	qemu := requireVM(t)
	img := buildImage(t)
	t.Logf("image %s: kernel %s, modules %v", img.Hash[:12], img.KernelVersion, img.Modules)
	n := startNode(t)
	g := boot(t, qemu, img, n, "vmboot1", false)
	t.Logf("qemu command line: %s", strings.Join(g.cmdline, " "))
	t.Logf("boot to handshake: %s", g.took.Round(time.Millisecond))
	if g.handshake.SandboxID != g.id || !g.handshake.PID1 {
		t.Fatalf("handshake %+v: want sandbox %s from the VM's init", g.handshake, g.id)
	}

	// Undeploy with no workload ends the agent; init then ends the VM.
	undeploy(t, n, g)
	g.waitExit(t, time.Minute)
	// The VM ended by sysrq b, not through the kernel's orderly shutdown
	// (device_shutdown, which can hang in virtio-net: powerOff).
	if !g.console.has(`msg="agent ended; powering off"`) {
		t.Error("init's last log line is not on the console")
	}
	if !g.console.has("sysrq: Resetting") {
		t.Error(`the console has no "sysrq: Resetting": init did not end the VM by an emergency restart`)
	}
	for _, orderly := range []string{"reboot: Power down", "reboot: Restarting system"} {
		if g.console.has(orderly) {
			t.Errorf("the console has %q: the kernel's orderly shutdown ran", orderly)
		}
	}
}

// undeploy asks g's agent, which runs no workload, to undeploy: it answers
// and ends.
func undeploy(tb testing.TB, n node, g *guest) {
	tb.Helper()
	b, _ := json.Marshal(agentapi.Undeploy{Reason: "boot test done"})
	msg, err := n.nc.Request(agentapi.UndeploySubject(g.id), b, 30*time.Second)
	if err != nil {
		tb.Fatalf("undeploy: %v", err)
	}
	var r agentapi.Reply
	if err := json.Unmarshal(msg.Data, &r); err != nil || !r.OK {
		tb.Fatalf("undeploy reply %s: %v", msg.Data, err)
	}
}

// TestBootHandshakeKernelCmdline boots without a config port, as on
// Firecracker: init falls back to the metadata on the kernel command line.
func TestBootHandshakeKernelCmdline(t *testing.T) {
	qemu := requireVM(t)
	img := buildImage(t)
	n := startNode(t)
	g := boot(t, qemu, img, n, "vmcmdline1", true)
	t.Logf("boot to handshake (metadata on the kernel command line): %s", g.took.Round(time.Millisecond))
	if g.handshake.SandboxID != g.id || !g.handshake.PID1 {
		t.Fatalf("handshake %+v: want sandbox %s from the VM's init", g.handshake, g.id)
	}
}

// BenchmarkBootToHandshake reports QEMU start → agent handshake under TCG.
func BenchmarkBootToHandshake(b *testing.B) {
	qemu := requireVM(b)
	img := buildImage(b)
	n := startNode(b)
	var total, best time.Duration
	i := 0
	for b.Loop() {
		i++
		g := boot(b, qemu, img, n, fmt.Sprintf("vmbench%d", i), false)
		total += g.took
		if best == 0 || g.took < best {
			best = g.took
		}
		_ = g.cmd.Process.Kill()
		<-g.exited
		g.exited <- nil
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(i), "ms/handshake")
	b.ReportMetric(float64(best.Milliseconds()), "best-ms")
}

// BenchmarkUndeployToExit reports how long a VM takes to end once its agent
// has answered an undeploy: the agent's drain, then PID 1's way out.
func BenchmarkUndeployToExit(b *testing.B) {
	qemu := requireVM(b)
	img := buildImage(b)
	n := startNode(b)
	var total time.Duration
	i := 0
	for b.Loop() {
		i++
		g := boot(b, qemu, img, n, fmt.Sprintf("vmexit%d", i), false)
		start := time.Now()
		undeploy(b, n, g)
		g.waitExit(b, time.Minute)
		total += time.Since(start)
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(i), "ms/exit")
}
