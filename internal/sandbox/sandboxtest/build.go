package sandboxtest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// EnvNexBinary names a prebuilt nex binary for BuildNex to use instead of
// building one (CI builds it once for every package's tests).
const EnvNexBinary = "NEX_BINARY"

// BuildNex returns a static nex binary for drivers that run `nex agent`: the
// one EnvNexBinary names, or one built from this module into a directory
// that lives as long as t (build it once in the top-level test and pass the
// path down to the driver).
func BuildNex(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(EnvNexBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", EnvNexBinary, p, err)
		}
		return p
	}
	out := filepath.Join(t.TempDir(), "nex")
	goBuild(t, out, "./cmd/nex")
	return out
}

// BuildWorkload builds the suite's test workload (testdata/workload), static.
func BuildWorkload(t testing.TB) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "workload")
	goBuild(t, out, "./internal/sandbox/sandboxtest/testdata/workload")
	return out
}

// goBuild builds a package of this module, found from the working directory
// (go test runs in the package's directory).
func goBuild(t testing.TB, out, pkg string) {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building %s needs the go command: %v", pkg, err)
	}
	gomod, err := exec.Command(gobin, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(gomod)) == "" || strings.TrimSpace(string(gomod)) == os.DevNull {
		t.Fatalf("building %s: no module found from the working directory: %v", pkg, err)
	}
	cmd := exec.Command(gobin, "build", "-o", out, pkg)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, stderr.String())
	}
}
