package firecracker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/firecracker/fctest"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// These tests run the real driver against fctest's server (cmd/fcserver),
// executed in place of the firecracker binary with --boot none: every API
// call, the process handling, the pid file, the vsock's host side and Stop
// are the driver's own; only the guest is missing. The VM tests (vm_test.go)
// boot the guest too.

type apiOnly struct {
	h      *sandboxtest.Harness
	kernel string
	initrd string
}

func newAPIOnly(t *testing.T) *apiOnly {
	dir := t.TempDir()
	return &apiOnly{
		h:      sandboxtest.NewHarness(t),
		kernel: writeFile(t, filepath.Join(dir, "vmlinux"), "not really a kernel"),
		initrd: writeFile(t, filepath.Join(dir, "initrd.cpio"), "not really an initramfs"),
	}
}

func (a *apiOnly) driver(t *testing.T, mod func(*Config)) *Driver {
	t.Helper()
	c := Config{
		Binary: sandboxtest.BuildPackage(t, "fcserver", fctest.ServerPackage),
		Args:   []string{"--boot", "none", "--debug"},
		Kernel: a.kernel,
		Initrd: a.initrd,
		Log:    sandboxtest.Log(t),
	}
	if mod != nil {
		mod(&c)
	}
	d, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (a *apiOnly) spec(t *testing.T, id string) sandbox.Spec {
	return a.h.AddAgent(id).Spec(t.TempDir())
}

// readRecord reads the requests fcserver answered.
func readRecord(t *testing.T, dir string) []fctest.Request {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, fctest.RecordFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var reqs []fctest.Request
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r fctest.Request
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("record line %q: %v", sc.Text(), err)
		}
		reqs = append(reqs, r)
	}
	return reqs
}

// configRequests drops the readiness probes (GET /, as many as it took).
func configRequests(reqs []fctest.Request) []fctest.Request {
	var out []fctest.Request
	for _, r := range reqs {
		if r.Method != "GET" {
			out = append(out, r)
		}
	}
	return out
}

func TestDriverStartStop(t *testing.T) {
	a := newAPIOnly(t)
	d := a.driver(t, nil)
	spec := a.spec(t, "sb1")
	spec.VCPU, spec.MemoryMiB = 2, 160
	ctx := testCtx(t)
	sb, err := d.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Stop(context.Background()) })

	if pid, err := os.ReadFile(filepath.Join(spec.Dir, sandbox.PIDFile)); err != nil || string(pid) != strconv.Itoa(sb.PID()) {
		t.Fatalf("pid file = %q, %v; want %d", pid, err, sb.PID())
	}
	cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(sb.PID()) + "/cmdline")
	if args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00"); !strings.Contains(strings.Join(args, " "),
		"--boot none --debug --api-sock "+filepath.Join(spec.Dir, APISocket)+" --id sb1") {
		t.Errorf("VMM command line %q", args)
	}

	reqs := readRecord(t, spec.Dir)
	if len(reqs) == 0 || reqs[0].Method != "GET" || reqs[0].Path != "/" {
		t.Fatalf("first request %+v; want the GET / readiness probe", reqs)
	}
	cfg := configRequests(reqs)
	paths := make([]string, len(cfg))
	for i, r := range cfg {
		if r.Fault != "" {
			t.Errorf("%s refused: %s", r.Path, r.Fault)
		}
		paths[i] = r.Path
	}
	if got := strings.Join(paths, " "); got != "/machine-config /boot-source /vsock /actions" {
		t.Fatalf("requests %s; want machine-config, boot-source, vsock, actions", got)
	}
	var mc MachineConfig
	var bs BootSource
	var vs Vsock
	var act struct {
		ActionType string `json:"action_type"`
	}
	for i, v := range []any{&mc, &bs, &vs, &act} {
		if err := json.Unmarshal(cfg[i].Body, v); err != nil {
			t.Fatal(err)
		}
	}
	if mc != (MachineConfig{VCPUCount: 2, MemSizeMiB: 160}) {
		t.Errorf("machine-config %+v", mc)
	}
	if bs.KernelImagePath != a.kernel || bs.InitrdPath != a.initrd {
		t.Errorf("boot-source %+v", bs)
	}
	m, err := agentapi.FromKernelArgs(bs.BootArgs)
	if err != nil || m.SandboxID != "sb1" || m.NATSURL != "vsock://2:4222" || m.Seed != spec.Agent.Seed {
		t.Errorf("metadata on the command line %+v, %v (boot_args %q)", m, err, bs.BootArgs)
	}
	if !strings.HasPrefix(bs.BootArgs, "console=ttyS0 reboot=k panic=-1 ") || !strings.Contains(bs.BootArgs, " i8042.noaux ") {
		t.Errorf("boot_args %q lack the console, reboot and i8042 settings", bs.BootArgs)
	}
	if vs != (Vsock{GuestCID: 3, UDSPath: filepath.Join(spec.Dir, VsockSocket)}) {
		t.Errorf("vsock %+v", vs)
	}
	if act.ActionType != "InstanceStart" {
		t.Errorf("action %+v", act)
	}

	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-sb.Done()
	if err := sb.Err(); !errors.Is(err, sandbox.ErrStopped) {
		t.Fatalf("Err = %v; want ErrStopped", err)
	}
	last := readRecord(t, spec.Dir)
	if r := last[len(last)-1]; r.Path != "/actions" || !strings.Contains(string(r.Body), "SendCtrlAltDel") || r.Fault != "" {
		t.Errorf("last request %+v; want Stop's SendCtrlAltDel", r)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := sb.Err(); !errors.Is(err, sandbox.ErrStopped) {
		t.Fatalf("Err after a second Stop = %v", err)
	}
}

// TestDriverVsockHostSide connects to <uds>_4222 as Firecracker does for a
// guest connection to host port 4222, and finds the node's NATS there.
func TestDriverVsockHostSide(t *testing.T) {
	a := newAPIOnly(t)
	spec := a.spec(t, "sb2")
	sb, err := a.driver(t, nil).Start(testCtx(t), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Stop(context.Background()) })
	for i := range 2 { // each guest connection gets its own
		c, err := net.Dial("unix", filepath.Join(spec.Dir, VsockSocket+"_4222"))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if err != nil || !strings.HasPrefix(line, "INFO {") {
			t.Fatalf("connection %d: read %q, %v; want the NATS server's INFO", i, line, err)
		}
	}
	// The guest reaches the NATS port and nothing else: no other per-port
	// socket exists.
	socks, _ := filepath.Glob(filepath.Join(spec.Dir, VsockSocket+"_*"))
	if len(socks) != 1 {
		t.Errorf("per-port sockets %v; want only _4222", socks)
	}
}

// TestDriverFaultNamesStep: a refusal by the API fails Start with the step,
// the request and Firecracker's fault message, and leaves no VMM running.
func TestDriverFaultNamesStep(t *testing.T) {
	a := newAPIOnly(t)
	cases := []struct {
		name string
		mod  func(*Config)
		vcpu int
		want []string
	}{
		{"too many vcpus", nil, 64, []string{"machine config: PUT /machine-config: 400 Bad Request: The vCPU number is invalid"}},
		{"kernel gone", func(c *Config) { c.Kernel = filepath.Join(t.TempDir(), "vmlinux") }, 1,
			[]string{"boot source: PUT /boot-source: 400 Bad Request: The kernel file cannot be opened"}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := a.spec(t, "sbf"+strconv.Itoa(i))
			spec.VCPU = c.vcpu
			_, err := a.driver(t, c.mod).Start(testCtx(t), spec)
			if err == nil {
				t.Fatal("Start succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			assertGone(t, spec.Dir)
		})
	}
}

// TestDriverVMMExits: a VMM that dies before its API answers fails Start with
// its exit and its last words.
func TestDriverVMMExits(t *testing.T) {
	a := newAPIOnly(t)
	spec := a.spec(t, "sb3")
	d := a.driver(t, func(c *Config) { c.Args = []string{"--boot", "bogus"} })
	_, err := d.Start(testCtx(t), spec)
	if err == nil || !strings.Contains(err.Error(), "await api socket: firecracker exited: exit status 1") ||
		!strings.Contains(err.Error(), `--boot \"bogus\"`) {
		t.Fatalf("Start = %v; want the VMM's exit status and its message", err)
	}
	assertGone(t, spec.Dir)
}

func TestDriverNoBinary(t *testing.T) {
	a := newAPIOnly(t)
	spec := a.spec(t, "sb4")
	d := a.driver(t, func(c *Config) { c.Binary = filepath.Join(t.TempDir(), "firecracker") })
	_, err := d.Start(testCtx(t), spec)
	if err == nil || !strings.Contains(err.Error(), "launch: firecracker binary") || !strings.Contains(err.Error(), "release archive") {
		t.Fatalf("Start = %v; want a launch error with the fix", err)
	}
}

// TestDriverGuestEnds: when the guest ends by itself (here: a Ctrl+Alt+Del
// nobody asked the driver for, which ends fcserver cleanly as a guest
// reboot ends Firecracker), Err is nil and a later Stop changes nothing.
func TestDriverGuestEnds(t *testing.T) {
	a := newAPIOnly(t)
	spec := a.spec(t, "sb5")
	ctx := testCtx(t)
	sb, err := a.driver(t, nil).Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClient(filepath.Join(spec.Dir, APISocket))
	defer c.Close()
	if err := c.Action(ctx, SendCtrlAltDel); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sb.Done():
	case <-ctx.Done():
		t.Fatal("VMM still running after the guest ended")
	}
	if err := sb.Err(); err != nil {
		t.Fatalf("Err = %v; want nil for a guest that ended itself", err)
	}
	if err := sb.Stop(ctx); err != nil || sb.Err() != nil {
		t.Fatalf("Stop after exit = %v, Err = %v", err, sb.Err())
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, VsockSocket+"_4222")); err == nil {
		t.Error("vsock socket still there after the VM ended")
	}
}

func TestDriverKilledFromOutside(t *testing.T) {
	a := newAPIOnly(t)
	spec := a.spec(t, "sb6")
	ctx := testCtx(t)
	sb, err := a.driver(t, nil).Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(sb.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-sb.Done()
	if err := sb.Err(); err == nil || errors.Is(err, sandbox.ErrStopped) || !strings.Contains(err.Error(), "signal: killed") {
		t.Fatalf("Err = %v; want the VMM's death", err)
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestDriverConcurrentStarts starts several VMMs at once from one driver.
func TestDriverConcurrentStarts(t *testing.T) {
	a := newAPIOnly(t)
	d := a.driver(t, nil)
	ctx := testCtx(t)
	const n = 4
	specs := make([]sandbox.Spec, n)
	for i := range specs {
		specs[i] = a.spec(t, "sbc"+strconv.Itoa(i))
	}
	sbs := make([]sandbox.Sandbox, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range specs {
		wg.Go(func() { sbs[i], errs[i] = d.Start(ctx, specs[i]) })
	}
	wg.Wait()
	for i := range sbs {
		if errs[i] != nil {
			t.Fatalf("start %d: %v", i, errs[i])
		}
	}
	for _, sb := range sbs {
		wg.Go(func() {
			if err := sb.Stop(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, sb := range sbs {
		if !errors.Is(sb.Err(), sandbox.ErrStopped) {
			t.Errorf("%s: Err = %v", sb.ID(), sb.Err())
		}
	}
}

func TestPreflight(t *testing.T) {
	a := newAPIOnly(t)
	d := a.driver(t, func(c *Config) { c.Kernel = filepath.Join(t.TempDir(), "vmlinux") })
	checks := d.Preflight(testCtx(t))
	byName := map[string]sandbox.Check{}
	for _, c := range checks {
		byName[c.Name] = c
	}
	if c := byName[CheckBinary]; !c.OK || !strings.Contains(c.Info, "Firecracker v"+fctest.Version) {
		t.Errorf("binary check %+v; want fcserver's version", c)
	}
	if c := byName[CheckKernel]; c.OK || c.Fix != FixBuildImage {
		t.Errorf("kernel check %+v; want a failure with the build fix", c)
	}
	if c := byName[CheckInitrd]; !c.OK {
		t.Errorf("initrd check %+v", c)
	}
	kvm := byName[CheckKVM]
	if want := accel.Detect(); kvm.OK != want.KVM() || (!kvm.OK && kvm.Fix != FixKVM) {
		t.Errorf("kvm check %+v; detection says %+v", kvm, want)
	}
	if c := CheckFirecrackerBinary(testCtx(t), filepath.Join(t.TempDir(), "firecracker")); c.OK || c.Fix != FixInstall {
		t.Errorf("missing binary check %+v", c)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Initrd: "i"}, "Kernel is empty"},
		{Config{Kernel: "k"}, "Initrd is empty"},
		{Config{Kernel: "k", Initrd: "i", StartTimeout: -1}, "StartTimeout"},
	} {
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New(%+v) = %v; want %q", c.cfg, err, c.want)
		}
	}
}

// assertGone checks that the VMM whose pid file is in dir has been reaped.
func assertGone(t *testing.T, dir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, sandbox.PIDFile))
	if err != nil {
		return // never launched
	}
	pid, _ := strconv.Atoi(string(b))
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("VMM %d still exists after a failed Start (kill 0: %v)", pid, err)
	}
}
