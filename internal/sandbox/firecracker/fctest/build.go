package fctest

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

// ServerPackage is cmd/fcserver's import path.
const ServerPackage = "github.com/nex-engine/nex/internal/sandbox/firecracker/fctest/cmd/fcserver"

var (
	serverOnce sync.Once
	serverPath string
	serverErr  error
)

// BuildServer builds cmd/fcserver once per test process and returns its
// path: the binary a test gives the firecracker driver as Config.Binary.
// The output goes to a fixed place per module checkout, so later runs find
// it up to date and skip the link.
func BuildServer(tb testing.TB) string {
	tb.Helper()
	serverOnce.Do(func() { serverPath, serverErr = buildServer() })
	if serverErr != nil {
		tb.Fatal(serverErr)
	}
	return serverPath
}

func buildServer() (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building fcserver needs the go command: %w", err)
	}
	out, err := exec.Command(gobin, "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("building fcserver: no module found from the working directory (%v)", err)
	}
	root := filepath.Dir(gomod)
	sum := sha256.Sum256([]byte(root))
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("nex-fctest-%d-%s", os.Getuid(), hex.EncodeToString(sum[:6])))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "fcserver")
	cmd := exec.Command(gobin, "build", "-o", bin, ServerPackage)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", ServerPackage, err, stderr.String())
	}
	return bin, nil
}
