package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// RehearsalFile is a program in the initramfs that writes RehearsalLine to
// its standard output and to its standard error, then exits 0: 175 bytes
// of x86-64, one segment, no libc. The agent runs it to rehearse a deploy
// (agent/rehearse.go): the guest kernel's fork, exec, ELF load, pipe and
// exit paths, and the agent's own (its pipes, its splitting of a
// workload's output into log lines), run once before the first workload
// needs them. It is there only in x86-64 images.
const RehearsalFile = "bin/rehearse"

// RehearsalLine is what the program writes on each stream.
const RehearsalLine = "rehearsal\n"

// rehearsalBase is where the program is loaded: the usual base of a static
// x86-64 executable, above the kernel's mmap_min_addr.
const rehearsalBase = 0x400000

// rehearsalCode returns the program's code, followed by the line:
// write(1, line), write(2, line), exit(0), by the syscall instruction
// (which keeps rsi and rdx: the second write reuses them). It is
// position-independent: the line is addressed from the instruction pointer.
func rehearsalCode() []byte {
	code := []byte{
		0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, 1          (stdout)
		0x48, 0x8d, 0x35, 0, 0, 0, 0, // lea rsi, [rip+line] (patched below)
		0xba, byte(len(RehearsalLine)), 0x00, 0x00, 0x00, // mov edx, len
		0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1          (SYS_write)
		0x0f, 0x05, // syscall
		0xbf, 0x02, 0x00, 0x00, 0x00, // mov edi, 2          (stderr)
		0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1          (SYS_write)
		0x0f, 0x05, // syscall
		0x31, 0xff, // xor edi, edi        (status 0)
		0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60         (SYS_exit)
		0x0f, 0x05, // syscall
	}
	const leaEnd = 12 // the lea's displacement counts from its end
	binary.LittleEndian.PutUint32(code[8:leaEnd], uint32(len(code)-leaEnd))
	return append(code, RehearsalLine...)
}

// rehearsalELF returns the program: an ELF header, one PT_LOAD program
// header mapping the whole file, then the code and its line.
func rehearsalELF() []byte {
	const (
		ehsize = 64 // sizes of elf.Header64 and elf.Prog64
		phsize = 56
	)
	entry := uint64(rehearsalBase + ehsize + phsize)
	code := rehearsalCode()
	size := uint64(ehsize + phsize + len(code))
	h := elf.Header64{
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Entry:     entry,
		Phoff:     ehsize,
		Ehsize:    ehsize,
		Phentsize: phsize,
		Phnum:     1,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	p := elf.Prog64{
		Type:   uint32(elf.PT_LOAD),
		Flags:  uint32(elf.PF_R | elf.PF_X),
		Vaddr:  rehearsalBase,
		Paddr:  rehearsalBase,
		Filesz: size,
		Memsz:  size,
		Align:  0x1000,
	}
	var b bytes.Buffer
	// Writes to a bytes.Buffer of fixed-size structs cannot fail.
	_ = binary.Write(&b, binary.LittleEndian, h)
	_ = binary.Write(&b, binary.LittleEndian, p)
	b.Write(code)
	return b.Bytes()
}
