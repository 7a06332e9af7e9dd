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

// TestRehearsalProgramRuns: the program is a well-formed ELF, and on an
// x86-64 Linux host it runs, writes its line on each stream and exits 0
// (as it does in the guest).
func TestRehearsalProgramRuns(t *testing.T) {
	b := rehearsalELF()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC || len(f.Progs) != 1 || f.Progs[0].Type != elf.PT_LOAD ||
		f.Progs[0].Filesz != uint64(len(b)) {
		t.Fatalf("machine %v, type %v, %d program headers", f.Machine, f.Type, len(f.Progs))
	}
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		t.Skipf("runs only on linux/amd64 (this is %s/%s); the ELF checks above passed", runtime.GOOS, runtime.GOARCH)
	}
	path := filepath.Join(t.TempDir(), "rehearse")
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil || stdout.String() != RehearsalLine || stderr.String() != RehearsalLine {
		t.Fatalf("run: %v, stdout %q, stderr %q; want exit 0 and %q on each", err, stdout.String(), stderr.String(), RehearsalLine)
	}
}
