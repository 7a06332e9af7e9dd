package guestimage

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
)

// stripForGuest drops from a static ELF executable everything exec does not
// map: the section table and the sections past the last loaded segment
// (symbols, DWARF). A Go binary loses about a third of its size. It matters
// because the guest unpacks the initramfs into RAM while the packed copy is
// still there: a 128 MiB microvm has ≈ 53 MiB free at that moment, and an
// unstripped nex does not fit.
//
// Nothing in the guest reads the binary's sections: the Go runtime finds its
// tables through the loaded segments, and exec needs only program headers.
func stripForGuest(b []byte) ([]byte, error) {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return b, nil // only what nex is built for; others go in as they are
	}
	le := binary.LittleEndian
	phoff, phentsize, phnum := le.Uint64(b[32:]), uint64(le.Uint16(b[54:])), uint64(le.Uint16(b[56:]))
	end := phoff + phentsize*phnum
	for _, p := range f.Progs {
		end = max(end, p.Off+p.Filesz)
	}
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 && s.Type != elf.SHT_NOBITS && s.Offset+s.FileSize > end {
			return nil, fmt.Errorf("strip: loaded section %s lies past the last segment", s.Name)
		}
	}
	if end > uint64(len(b)) {
		return nil, errors.New("strip: segments run past the end of the file")
	}
	out := bytes.Clone(b[:end])
	le.PutUint64(out[40:], 0) // e_shoff
	le.PutUint16(out[60:], 0) // e_shnum
	le.PutUint16(out[62:], 0) // e_shstrndx
	return out, nil
}
