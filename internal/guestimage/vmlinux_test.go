package guestimage

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// fakeELF is a minimal x86-64 ELF executable: a header, one PT_LOAD program
// header and a body of n bytes.
func fakeELF(n int) []byte {
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+phsize+n)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // 64-bit, little endian, version 1
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2)  // ET_EXEC
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)  // version
	le.PutUint64(b[24:], 0x1000000)
	le.PutUint64(b[32:], ehsize) // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	ph := b[ehsize:]
	le.PutUint32(ph[0:], 1) // PT_LOAD
	le.PutUint32(ph[4:], 5) // R+X
	le.PutUint64(ph[8:], 0)
	le.PutUint64(ph[16:], 0x1000000)
	le.PutUint64(ph[24:], 0x1000000)
	le.PutUint64(ph[32:], uint64(len(b)))
	le.PutUint64(ph[40:], uint64(len(b)))
	for i := ehsize + phsize; i < len(b); i++ {
		b[i] = byte(i * 7)
	}
	return b
}

var compressors = map[string]func(w io.Writer) (io.WriteCloser, error){
	"gzip": func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriter(w), nil },
	"lz4": func(w io.Writer) (io.WriteCloser, error) {
		z := lz4.NewWriter(w)
		return z, z.Apply(lz4.LegacyOption(true))
	},
	"xz":   func(w io.Writer) (io.WriteCloser, error) { return xz.NewWriter(w) },
	"zstd": func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) },
}

// payload compresses elf and appends its size, as the kernel build does.
func payload(t *testing.T, name string, elf []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := compressors[name](&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(elf); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.AppendUint32(buf.Bytes(), uint32(len(elf)))
}

// fakeBzImage lays out a setup area with a boot header that points at the
// payload, followed by a decoy of the same magic before the real stream.
func fakeBzImage(p []byte, withHeader bool) []byte {
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	decoy := []byte{0x02, 0x21, 0x4c, 0x18, 0x1f, 0x8b, 0x08, 0xfd, '7', 'z', 'X', 'Z', 0, 0x28, 0xb5, 0x2f, 0xfd, 9, 9, 9}
	img = append(img, decoy...)
	if withHeader {
		copy(img[0x202:], "HdrS")
		binary.LittleEndian.PutUint16(img[0x206:], 0x20f)
		binary.LittleEndian.PutUint32(img[0x248:], uint32(len(decoy)))
		binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(p)))
	}
	img = append(img, p...)
	return append(img, bytes.Repeat([]byte{0xcc}, 100)...)
}

func TestVmlinuxFromBzImage(t *testing.T) {
	want := fakeELF(200000)
	for name := range compressors {
		for _, hdr := range []bool{true, false} {
			img := fakeBzImage(payload(t, name, want), hdr)
			got, err := Vmlinux(img)
			if err != nil {
				t.Fatalf("%s (header %v): %v", name, hdr, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s (header %v): extracted %d bytes that differ from the ELF", name, hdr, len(got))
			}
		}
	}
}

func TestVmlinuxPassesELFThrough(t *testing.T) {
	elf := fakeELF(100)
	got, err := Vmlinux(elf)
	if err != nil || !bytes.Equal(got, elf) {
		t.Fatalf("vmlinux given as is: %v", err)
	}
}

func TestVmlinuxRejects(t *testing.T) {
	// A payload cut short must not pass for a kernel.
	p := payload(t, "gzip", fakeELF(100000))
	if _, err := Vmlinux(fakeBzImage(p[:len(p)/2], false)); !errors.Is(err, ErrNoVmlinux) {
		t.Fatalf("truncated payload: err = %v, want ErrNoVmlinux", err)
	}
	if _, err := Vmlinux([]byte("not a kernel at all")); !errors.Is(err, ErrNoVmlinux) {
		t.Fatalf("garbage: err = %v, want ErrNoVmlinux", err)
	}
	// Something compressed that is not an ELF.
	if _, err := Vmlinux(fakeBzImage(payload(t, "lz4", bytes.Repeat([]byte("x"), 5000)), true)); !errors.Is(err, ErrNoVmlinux) {
		t.Fatalf("non-ELF payload: err = %v, want ErrNoVmlinux", err)
	}
}
