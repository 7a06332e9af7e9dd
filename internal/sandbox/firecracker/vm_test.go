package firecracker

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/firecracker/fctest"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// VM tests run the driver against fcserver booting the real guest image
// (Debian's cloud kernel, a freshly built static nex as /init) with QEMU
// under TCG. They prove the driver's API use and process handling with a
// guest whose agent handshakes, runs workloads and ends; they do not prove
// anything about Firecracker itself, KVM, or the guest's vsock code (the
// vsock is mapped onto QEMU user-mode networking: see package fctest).

const envVMTests = "NEX_VM_TESTS"

const vmTimeout = 2 * time.Minute

func requireVM(tb testing.TB) {
	tb.Helper()
	if os.Getenv(envVMTests) != "1" {
		tb.Skipf("boots the guest image under fctest's QEMU (slow under TCG): set %s=1 to run", envVMTests)
	}
	if _, err := exec.LookPath(qemu.DefaultBinary); err != nil {
		tb.Skipf("fctest boots guests with QEMU, and %s is not installed (apt-get install -y qemu-system-x86)", qemu.DefaultBinary)
	}
}

type vmAssets struct {
	nex    string
	img    guestimage.Image
	server string
}

func vmSetup(t *testing.T) vmAssets {
	t.Helper()
	nex := sandboxtest.BuildNex(t)
	return vmAssets{nex: nex, img: sandboxtest.GuestImage(t, nex),
		server: sandboxtest.BuildPackage(t, "fcserver", fctest.ServerPackage)}
}

// driver runs fcserver, booting QEMU, in place of firecracker.
func (a vmAssets) driver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{
		Binary: a.server,
		Args:   []string{"--nex", a.nex},
		Kernel: a.img.Kernel,
		Initrd: a.img.Initrd,
		Log:    sandboxtest.Log(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	sandboxtest.Run(t, func(t *testing.T) sandbox.Driver { return a.driver(t) },
		sandboxtest.WithTimeout(vmTimeout), sandboxtest.WithConcurrency(2))
}

// TestVMBoot boots one guest and checks what happened on the way: the API
// calls in order, the guest's console in console.log, the agent's handshake
// through the vsock's host side, and a Stop by Ctrl+Alt+Del.
func TestVMBoot(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	h := sandboxtest.NewHarness(t)
	agent := h.AddAgent("vmboot1")
	spec := agent.Spec(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), vmTimeout)
	defer cancel()
	sb, err := a.driver(t).Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Stop(context.Background())
	agent.Watch(sb)
	hs, err := agent.WaitHandshake(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hs.SandboxID != "vmboot1" || !hs.PID1 {
		t.Fatalf("handshake %+v; want the guest's PID 1 agent", hs)
	}
	var paths []string
	for _, r := range configRequests(readRecord(t, spec.Dir)) {
		if r.Fault != "" {
			t.Errorf("%s refused: %s", r.Path, r.Fault)
		}
		paths = append(paths, r.Path)
	}
	if got := strings.Join(paths, " "); got != "/machine-config /boot-source /vsock /actions" {
		t.Errorf("requests %s", got)
	}
	// The guest has no config port here: init reads its identity from the
	// kernel command line, as under Firecracker. Its "booted" line comes
	// once the handshake is answered, so it may still be on its way.
	var console []byte
	// The agent then rehearses a deploy (agent/rehearse.go) with the
	// image's /bin/true.
	for _, want := range []string{"role=init", `via="kernel command line"`, "sandbox=vmboot1", "rehearsed a deploy"} {
		for !strings.Contains(string(console), want) && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
			console, _ = os.ReadFile(filepath.Join(spec.Dir, ConsoleFile))
		}
		if !strings.Contains(string(console), want) {
			t.Errorf("console.log lacks %q:\n%s", want, tail(console))
		}
	}
	if err := sb.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := sb.Err(); err != sandbox.ErrStopped {
		t.Fatalf("Err = %v; want ErrStopped", err)
	}
}

func tail(b []byte) string {
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}
