package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
// benchmark: a static nex (the guest's /init and the host's vm-forward) and
// the guest image around it.
type vmAssets struct {
	nex string
	img guestimage.Image
}

var (
	assetsOnce sync.Once
	assets     vmAssets
	assetsErr  error
	assetsDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if assetsDir != "" {
		os.RemoveAll(assetsDir)
	}
	os.Exit(code)
}

func vmSetup(tb testing.TB) vmAssets {
	tb.Helper()
	assetsOnce.Do(func() { assets, assetsErr = buildAssets() })
	if assetsErr != nil {
		tb.Fatal(assetsErr)
	}
	return assets
}

func buildAssets() (vmAssets, error) {
	var a vmAssets
	var err error
	if assetsDir, err = os.MkdirTemp("", "nex-qemu-test-"); err != nil {
		return a, err
	}
	if a.nex = os.Getenv(sandboxtest.EnvNexBinary); a.nex == "" {
		a.nex = filepath.Join(assetsDir, "nex")
		if err := goBuild(a.nex, "./cmd/nex"); err != nil {
			return a, err
		}
	}
	// Kernel packages and images are cached across runs: a build of the same
	// source gives the same nex, hence the same image hash.
	cache := os.Getenv("NEX_CACHE_DIR")
	if cache == "" {
		if cache, err = os.UserCacheDir(); err != nil {
			cache = os.TempDir()
		}
		cache = filepath.Join(cache, "nex")
	}
	a.img, err = guestimage.Build(context.Background(), guestimage.Options{
		CacheDir: filepath.Join(cache, "images"),
		Agent:    a.nex,
	})
	return a, err
}

// goBuild builds a static binary of a package of this module.
func goBuild(out, pkg string) error {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return &buildError{pkg, err, stderr.String()}
	}
	return nil
}

type buildError struct {
	pkg    string
	err    error
	output string
}

func (e *buildError) Error() string {
	return "go build " + e.pkg + ": " + e.err.Error() + "\n" + e.output
}

// driver makes a driver for the built image; mod adjusts its config.
func (a vmAssets) driver(tb testing.TB, mod func(*Config)) *Driver {
	tb.Helper()
	c := Config{
		Kernel:    a.img.Kernel,
		Initrd:    a.img.Initrd,
		Forwarder: []string{a.nex, ForwardSubcommand},
		Log:       sandboxtest.Log(tb),
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
