package guestimage

import (
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// TestTrueRuns: the program is a well-formed ELF, and on an x86-64 Linux
// host it runs and exits 0 (as it does in the guest).
func TestTrueRuns(t *testing.T) {
	b := trueELF()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || len(f.Progs) != 1 || f.Progs[0].Type != elf.PT_LOAD {
		t.Fatalf("machine %v, type %v, %d program headers", f.Machine, f.Type, len(f.Progs))
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("runs only on linux/amd64 (this is %s/%s); the ELF checks above passed", runtime.GOOS, runtime.GOARCH)
	}
	path := filepath.Join(t.TempDir(), "true")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("run: %v, output %q; want exit 0 and no output", err, out)
	}
}
