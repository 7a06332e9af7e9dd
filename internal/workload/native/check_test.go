package native

import (
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/workload"
)

// elfFile is the smallest ELF64 file debug/elf reads: a header, then one
// PT_INTERP program header naming loader when it is not empty.
func elfFile(typ elf.Type, machine elf.Machine, osabi elf.OSABI, loader string) []byte {
	const ehdr, phdr = 64, 56
	le := binary.LittleEndian
	b := make([]byte, ehdr, ehdr+phdr+len(loader)+1)
	copy(b, elf.ELFMAG)
	b[elf.EI_CLASS], b[elf.EI_DATA], b[elf.EI_VERSION], b[elf.EI_OSABI] =
		byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT), byte(osabi)
	le.PutUint16(b[16:], uint16(typ))
	le.PutUint16(b[18:], uint16(machine))
	le.PutUint32(b[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(b[24:], 0x401000) // entry
	le.PutUint16(b[52:], ehdr)
	le.PutUint16(b[54:], phdr)
	if loader == "" {
		return b
	}
	le.PutUint64(b[32:], ehdr) // phoff
	le.PutUint16(b[56:], 1)    // phnum
	p := make([]byte, phdr)
	le.PutUint32(p[0:], uint32(elf.PT_INTERP))
	le.PutUint64(p[8:], ehdr+phdr)              // offset
	le.PutUint64(p[32:], uint64(len(loader)+1)) // filesz
	le.PutUint64(p[40:], uint64(len(loader)+1)) // memsz
	return append(append(append(b, p...), loader...), 0)
}

func hostMachine(t *testing.T) elf.Machine {
	for m, arch := range goarch {
		if arch == runtime.GOARCH {
			return m
		}
	}
	t.Skipf("no ELF machine known for %s", runtime.GOARCH)
	return 0
}

func TestCheck(t *testing.T) {
	m := hostMachine(t)
	other := elf.EM_AARCH64
	if m == other {
		other = elf.EM_X86_64
	}
	// A loader that is on every Linux host with a shell, whatever its libc.
	hostLoader := ""
	if f, err := elf.Open("/bin/sh"); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b := make([]byte, p.Filesz)
				_, _ = p.ReadAt(b, 0)
				hostLoader = strings.TrimRight(string(b), "\x00")
			}
		}
		f.Close()
	}
	dyn := elfFile(elf.ET_EXEC, m, elf.ELFOSABI_NONE, hostLoader)
	if hostLoader == "" {
		dyn = nil
	}
	cases := []struct {
		name         string
		data         []byte
		inVM, onHost string // "" accepted; else a piece of the refusal
	}{
		{"static executable", elfFile(elf.ET_EXEC, m, elf.ELFOSABI_NONE, ""), "", ""},
		{"static-pie", elfFile(elf.ET_DYN, m, elf.ELFOSABI_NONE, ""), "", ""},
		{"GNU/Linux ABI", elfFile(elf.ET_EXEC, m, elf.ELFOSABI_LINUX, ""), "", ""},
		{"dynamic, the host's loader", dyn, "dynamically linked (its loader is " + hostLoader + "), and a VM sandbox holds no shared libraries: link it statically (Go: CGO_ENABLED=0 go build)", ""},
		{"dynamic, a loader the host lacks", elfFile(elf.ET_EXEC, m, elf.ELFOSABI_NONE, "/lib/ld-nex-test.so.1"),
			"its loader is /lib/ld-nex-test.so.1", "its loader /lib/ld-nex-test.so.1 is not on this machine"},
		{"another architecture", elfFile(elf.ET_EXEC, other, elf.ELFOSABI_NONE, ""),
			"built for " + goarch[other] + "; this node runs " + runtime.GOARCH, "built for " + goarch[other]},
		{"another OS", elfFile(elf.ET_EXEC, m, elf.ELFOSABI_FREEBSD, ""), "built for FREEBSD, not Linux", "built for FREEBSD"},
		{"object file", elfFile(elf.ET_REL, m, elf.ELFOSABI_NONE, ""), "type ET_REL, not an executable", "ET_REL"},
		{"damaged ELF", []byte(elf.ELFMAG + "\x09"), "a damaged ELF file", "a damaged ELF file"},
		{"shell script", []byte("#!/bin/sh\necho hi\n"), "a script for /bin/sh, and a VM sandbox has no interpreters", ""},
		{"script for a missing interpreter", []byte("#! /opt/nope/python -u\n"), "a script for /opt/nope/python", "/opt/nope/python, which is not on this machine"},
		{"empty #! line", []byte("#!\n"), "names no interpreter", "names no interpreter"},
		{"JSON", []byte(`{"machine_pool_size": 2}`), `neither ELF nor a #! script (it starts with "{\"machine_pool_s")`, "neither ELF"},
		{"wasm", []byte("\x00asm\x01\x00\x00\x00"), "a WebAssembly module", "a WebAssembly module"},
		{"empty", nil, `(it starts with "")`, `(it starts with "")`},
	}
	dir := t.TempDir()
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.data == nil && tc.name != "empty" {
				t.Skip("no dynamically linked /bin/sh on this host")
			}
			path := filepath.Join(dir, string(rune('a'+i)))
			if err := os.WriteFile(path, tc.data, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, where := range []struct {
				onHost bool
				want   string
			}{{false, tc.inVM}, {true, tc.onHost}} {
				err := Check(path, where.onHost)
				switch {
				case where.want == "" && err != nil:
					t.Errorf("onHost=%v: %v, want accepted", where.onHost, err)
				case where.want != "" && (!errors.Is(err, ErrNotRunnable) || !strings.Contains(err.Error(), where.want)):
					t.Errorf("onHost=%v: %v, want ErrNotRunnable with %q", where.onHost, err, where.want)
				}
			}
		})
	}
	if err := Check(filepath.Join(dir, "missing"), true); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestStartSaysWhyNot: the kernel refuses an executable whose loader is
// missing with ENOENT, as if the file were not there; Start says what is
// missing instead (TestStartRefusesNonExecutable: and ENOEXEC).
func TestStartSaysWhyNot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w")
	if err := os.WriteFile(path, elfFile(elf.ET_EXEC, hostMachine(t), elf.ELFOSABI_NONE, "/lib/ld-nex-test.so.1"), 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := Runtime{}.Start(context.Background(), workload.Spec{Name: "w", Path: path})
	if err == nil {
		_ = h.Stop(context.Background())
		t.Fatal("started")
	}
	const want = "start w: cannot run here: dynamically linked, and its loader /lib/ld-nex-test.so.1 is not on this machine"
	if !errors.Is(err, ErrNotRunnable) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("got %v, want %q…", err, want)
	}
}

// BenchmarkCheck is the check a node makes on every native deploy, on this
// test binary (a real executable with all its sections).
func BenchmarkCheck(b *testing.B) {
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := Check(self, true); err != nil {
			b.Fatal(err)
		}
	}
}
