package native

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
)

// ErrNotRunnable marks an artifact that cannot run as a native workload
// where it was sent; the error's text says what the file is and what to do.
var ErrNotRunnable = errors.New("cannot run here")

// Check tells whether the file at path can run as a native workload, from
// its first bytes, before anything is started. onHost is whether it would
// run on a machine with its own files (the process sandbox, or the agent on
// the machine where it runs): there a dynamically linked executable or a #!
// script runs when its loader or interpreter is present. A VM guest holds
// nex and nothing else, so anything but a static executable is refused.
//
// Without it, the kernel's answers are misleading: exec of a dynamic
// executable whose loader is missing fails with "no such file or
// directory", though the file is there.
func Check(path string, onHost bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 256)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return checkELF(f, onHost)
	case bytes.HasPrefix(head, []byte("#!")):
		return checkScript(head, onHost)
	case bytes.HasPrefix(head, []byte("\x00asm")):
		return notRunnable("a WebAssembly module, not an executable: deploy it as workload type wasm")
	default:
		return notRunnable("not an executable: neither ELF nor a #! script (it starts with %q)", head[:min(len(head), 16)])
	}
}

func notRunnable(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrNotRunnable}, a...)...)
}

// goarch names ELF machines the way Go does, for messages.
var goarch = map[elf.Machine]string{
	elf.EM_X86_64: "amd64", elf.EM_386: "386", elf.EM_AARCH64: "arm64", elf.EM_ARM: "arm",
	elf.EM_RISCV: "riscv64", elf.EM_PPC64: "ppc64", elf.EM_S390: "s390x", elf.EM_LOONGARCH: "loong64",
	elf.EM_MIPS: "mips",
}

func checkELF(r io.ReaderAt, onHost bool) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return notRunnable("a damaged ELF file: %v", err)
	}
	arch := goarch[f.Machine]
	if arch == "" {
		arch = f.Machine.String()
	}
	if f.Class == elf.ELFCLASS32 && f.Machine == elf.EM_X86_64 {
		arch = "amd64p32"
	}
	switch {
	case f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN:
		return notRunnable("an ELF file of type %v, not an executable", f.Type)
	case f.OSABI != elf.ELFOSABI_NONE && f.OSABI != elf.ELFOSABI_LINUX:
		return notRunnable("built for %s, not Linux", strings.TrimPrefix(f.OSABI.String(), "ELFOSABI_"))
	case arch != runtime.GOARCH:
		return notRunnable("built for %s; this node runs %s (Go: GOARCH=%s)", arch, runtime.GOARCH, runtime.GOARCH)
	}
	var loader string
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		b, err := io.ReadAll(p.Open())
		if err != nil {
			return notRunnable("a damaged ELF file: its loader's name: %v", err)
		}
		loader = string(bytes.TrimRight(b, "\x00"))
	}
	switch {
	case loader == "":
		return nil // static, or static-pie
	case !onHost:
		return notRunnable("dynamically linked (its loader is %s), and a VM sandbox holds no shared libraries: "+
			"link it statically (Go: CGO_ENABLED=0 go build)", loader)
	case !exists(loader):
		return notRunnable("dynamically linked, and its loader %s is not on this machine: link it statically "+
			"(Go: CGO_ENABLED=0 go build)", loader)
	}
	return nil
}

// checkScript looks at a #! line's interpreter.
func checkScript(head []byte, onHost bool) error {
	line, _, _ := bytes.Cut(head[2:], []byte("\n"))
	fields := strings.Fields(string(line))
	if len(fields) == 0 {
		return notRunnable("a #! script that names no interpreter")
	}
	interp := fields[0]
	switch {
	case !onHost:
		return notRunnable("a script for %s, and a VM sandbox has no interpreters: deploy a static executable", interp)
	case !exists(interp):
		return notRunnable("a script for %s, which is not on this machine", interp)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
