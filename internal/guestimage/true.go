package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
)

// TrueFile is a program in the initramfs that exits 0 and does nothing
// else, as true does: 132 bytes of x86-64, one segment, no libc. The agent
// runs it to rehearse a deploy (agent/rehearse.go): the guest kernel's fork,
// exec, ELF load and exit paths, and the agent's own, run once before the
// first workload needs them. It is there only in x86-64 images.
const TrueFile = "bin/true"

// trueBase is where the program is loaded: the usual base of a static
// x86-64 executable, above the kernel's mmap_min_addr.
const trueBase = 0x400000

// trueCode is exit(0) by the syscall instruction.
var trueCode = []byte{
	0x31, 0xff, // xor edi, edi        (status 0)
	0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60  (SYS_exit)
	0x0f, 0x05, // syscall
}

// trueELF returns the program: an ELF header, one PT_LOAD program header
// mapping the whole file, then the code.
func trueELF() []byte {
	const (
		ehsize = 64 // sizes of elf.Header64 and elf.Prog64
		phsize = 56
	)
	size := uint64(ehsize + phsize + len(trueCode))
	h := elf.Header64{
		Type:      uint16(elf.ET_EXEC),
		Machine:   uint16(elf.EM_X86_64),
		Version:   uint32(elf.EV_CURRENT),
		Entry:     trueBase + ehsize + phsize,
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
		Vaddr:  trueBase,
		Paddr:  trueBase,
		Filesz: size,
		Memsz:  size,
		Align:  0x1000,
	}
	var b bytes.Buffer
	// Writes to a bytes.Buffer of fixed-size structs cannot fail.
	_ = binary.Write(&b, binary.LittleEndian, h)
	_ = binary.Write(&b, binary.LittleEndian, p)
	b.Write(trueCode)
	return b.Bytes()
}
