package qemu

import (
	"os"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// VM tests boot real guests (Debian's cloud kernel, a freshly built static
// nex as /init) under QEMU; under TCG each boot takes seconds, so they run
// only when asked.

const envVMTests = "NEX_VM_TESTS"

// vmTimeout bounds each step of a VM test: boots under TCG on a busy 2-core
// machine can take several seconds each.
const vmTimeout = 2 * time.Minute

func requireVM(tb testing.TB) {
	tb.Helper()
	if os.Getenv(envVMTests) != "1" {
		tb.Skipf("boots QEMU microVMs (slow under TCG): set %s=1 to run", envVMTests)
	}
	requireQEMU(tb)
}

// vmAssets are built once per test binary and shared by every VM test and
// benchmark: a static nex (the guest's /init) and
// the guest image around it.
type vmAssets struct {
	nex string
	img guestimage.Image
}

func vmSetup(tb testing.TB) vmAssets {
	tb.Helper()
	nex := sandboxtest.BuildNex(tb)
	return vmAssets{nex: nex, img: sandboxtest.GuestImage(tb, nex)}
}

// driver makes a driver for the built image; mod adjusts its config.
func (a vmAssets) driver(tb testing.TB, mod func(*Config)) *Driver {
	tb.Helper()
	c := Config{
		Kernel: a.img.Kernel,
		Initrd: a.img.Initrd,
		Log:    sandboxtest.Log(tb),
	}
	if mod != nil {
		mod(&c)
	}
	d, err := New(c)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	sandboxtest.Run(t, func(t *testing.T) sandbox.Driver { return a.driver(t, nil) },
		sandboxtest.WithTimeout(vmTimeout), sandboxtest.WithConcurrency(2))
}

// TestConformanceSnapshot runs the suite on snapshot-warm clones: every
// driver shares one SnapshotDir, so the first builds the template and the
// rest find it.
func TestConformanceSnapshot(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	snaps := t.TempDir()
	sandboxtest.Run(t, func(t *testing.T) sandbox.Driver {
		return a.driver(t, func(c *Config) { c.Snapshot, c.SnapshotDir = true, snaps })
	}, sandboxtest.WithTimeout(vmTimeout), sandboxtest.WithConcurrency(2))
}
