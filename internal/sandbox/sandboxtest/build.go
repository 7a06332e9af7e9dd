package sandboxtest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// EnvNexBinary names a prebuilt nex binary for BuildNex to use instead of
// building one.
const EnvNexBinary = "NEX_BINARY"

// BuildNex returns a static nex binary for drivers that run `nex agent`: the
// one EnvNexBinary names, or one built from this module.
func BuildNex(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvNexBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", EnvNexBinary, p, err)
		}
		return p
	}
	return build(t, "nex", "./cmd/nex")
}

// BuildWorkload builds the suite's test workload (testdata/workload), static.
func BuildWorkload(t testing.TB) string {
	t.Helper()
	return build(t, "workload", "./internal/sandbox/sandboxtest/testdata/workload")
}

// BuildPackage builds pkg (an import path of this module, or ./path from
// its root) static, once per test process, and returns the binary's path.
func BuildPackage(t testing.TB, name, pkg string) string {
	t.Helper()
	return build(t, name, pkg)
}

// BuildCEcho compiles testdata/cecho, an echo workload in C (static, with
// the host's C compiler): what a warm deploy costs a workload whose own
// start is next to nothing. Benchmarks use it; tests need no C compiler.
func BuildCEcho(t testing.TB) string {
	t.Helper()
	return buildWith(t, "cecho", "internal/sandbox/sandboxtest/testdata/cecho/echo.c", ccBuild)
}

// startHome is HOME as the test process started, before any test changed it.
var startHome = os.Getenv("HOME")

type built struct {
	once sync.Once
	path string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*built{}
)

// build builds a package of this module once per test process. The output
// goes to a fixed place per module checkout, so the go command finds it up
// to date in later runs and skips the link (seconds for nex), and packages
// testing in parallel replace it atomically.
func build(t testing.TB, name, pkg string) string {
	t.Helper()
	return buildWith(t, name, pkg, goBuild)
}

// buildWith builds src once per test process with how.
func buildWith(t testing.TB, name, pkg string, how func(name, src string) (string, error)) string {
	t.Helper()
	buildsMu.Lock()
	b, ok := builds[pkg]
	if !ok {
		b = &built{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() { b.path, b.err = how(name, pkg) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// goBuild builds pkg of the module found from the working directory (go
// test runs in the package's directory) with CGO_ENABLED=0.
func goBuild(name, pkg string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building %s needs the go command: %w", pkg, err)
	}
	root, dir, err := buildDirs(pkg)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	cmd := exec.Command(gobin, "build", "-o", bin, pkg)
	cmd.Dir = root
	// Tests may point HOME elsewhere (for ~/.nex keys); the go command
	// finds its module and build caches under the HOME the process started
	// with, and must keep doing so (no network in CI's sandbox).
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "HOME="+startHome)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, stderr.String())
	}
	return bin, nil
}

// buildDirs returns the root of the module found from the working directory
// and the directory built binaries go to.
func buildDirs(what string) (root, dir string, err error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", "", fmt.Errorf("building %s: no module found from the working directory (%v)", what, err)
	}
	root = filepath.Dir(gomod)
	sum := sha256.Sum256([]byte(root))
	dir = filepath.Join(os.TempDir(), fmt.Sprintf("nex-sandboxtest-%d-%s", os.Getuid(), hex.EncodeToString(sum[:6])))
	return root, dir, os.MkdirAll(dir, 0o700)
}

// ccBuild compiles the C file src (relative to the module's root) static.
func ccBuild(name, src string) (string, error) {
	cc, err := exec.LookPath("cc")
	if err != nil {
		return "", fmt.Errorf("building %s needs a C compiler (apt-get install gcc libc6-dev): %w", src, err)
	}
	root, dir, err := buildDirs(src)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, name)
	// Compiled aside and renamed: test processes may build it at once.
	tmp := fmt.Sprintf("%s.%d", bin, os.Getpid())
	out, err := exec.Command(cc, "-static", "-O2", "-Wall", "-o", tmp, filepath.Join(root, src)).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("cc %s: %w\n%s", src, err, out)
	}
	return bin, os.Rename(tmp, bin)
}
