package guestimage

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz"
)

// maxVmlinux bounds what a payload may decompress to, so a corrupt or hostile
// kernel file cannot fill memory.
const maxVmlinux = 512 << 20

// A payloadFormat is one compressor the kernel build may have used for the
// bzImage payload, recognised by the magic bytes at the start of its stream.
type payloadFormat struct {
	name   string
	magic  []byte
	reader func(io.Reader) (io.Reader, error)
}

// payloadFormats in the order they are tried when scanning. lz4 comes first
// because Debian's kernels use it.
var payloadFormats = []payloadFormat{
	{"lz4", []byte{0x02, 0x21, 0x4c, 0x18}, func(r io.Reader) (io.Reader, error) {
		// The reader handles the legacy frame and the kernel's trailing size.
		return lz4.NewReader(r), nil
	}},
	{"gzip", []byte{0x1f, 0x8b, 0x08}, func(r io.Reader) (io.Reader, error) {
		z, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		z.Multistream(false) // the kernel appends its size after the stream
		return z, nil
	}},
	{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, func(r io.Reader) (io.Reader, error) {
		return xz.ReaderConfig{SingleStream: true}.NewReader(r)
	}},
	{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd}, func(r io.Reader) (io.Reader, error) {
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxVmlinux))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	}},
}

// ErrNoVmlinux is returned when no uncompressed kernel can be found in a file.
var ErrNoVmlinux = errors.New("no uncompressed ELF kernel found")

// Vmlinux returns the uncompressed ELF kernel (what QEMU boots through PVH
// and Firecracker requires) held in kernel: kernel itself when it already is
// one, otherwise the compressed payload of a bzImage. The payload is located
// from the boot header when there is one and by scanning for compressor
// magics otherwise; a candidate counts only when it decompresses to a
// complete ELF file.
func Vmlinux(kernel []byte) ([]byte, error) {
	if isCompleteELF(kernel) {
		return kernel, nil
	}
	var errs []error
	if p, ok := bootPayload(kernel); ok {
		for _, f := range payloadFormats {
			if bytes.HasPrefix(p, f.magic) {
				out, err := decompress(f, p)
				if err == nil {
					return out, nil
				}
				errs = append(errs, fmt.Errorf("%s payload from boot header: %w", f.name, err))
			}
		}
	}
	for _, f := range payloadFormats {
		for off := 0; ; {
			i := bytes.Index(kernel[off:], f.magic)
			if i < 0 {
				break
			}
			out, err := decompress(f, kernel[off+i:])
			if err == nil {
				return out, nil
			}
			if len(errs) < 8 {
				errs = append(errs, fmt.Errorf("%s at %d: %w", f.name, off+i, err))
			}
			off += i + 1
		}
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%w: not an ELF and no lz4, gzip, xz or zstd payload inside", ErrNoVmlinux)
	}
	return nil, fmt.Errorf("%w: %w", ErrNoVmlinux, errors.Join(errs...))
}

// bootPayload returns the payload a bzImage's setup header points at
// (boot protocol 2.08 and later: payload_offset and payload_length).
func bootPayload(k []byte) ([]byte, bool) {
	const (
		setupSectsOff = 0x1f1
		headerOff     = 0x202
		versionOff    = 0x206
		payloadOff    = 0x248
	)
	if len(k) < payloadOff+8 || string(k[headerOff:headerOff+4]) != "HdrS" {
		return nil, false
	}
	if binary.LittleEndian.Uint16(k[versionOff:]) < 0x208 {
		return nil, false
	}
	setupSects := int(k[setupSectsOff])
	if setupSects == 0 {
		setupSects = 4
	}
	start := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(k[payloadOff:]))
	n := int(binary.LittleEndian.Uint32(k[payloadOff+4:]))
	if n <= 0 || start < 0 || start+n > len(k) {
		return nil, false
	}
	return k[start : start+n], true
}

// decompress runs one format over p. The kernel build appends the
// uncompressed size after the stream, which some readers report as a
// trailing error; such an error is ignored when what came out is already a
// complete ELF file.
func decompress(f payloadFormat, p []byte) ([]byte, error) {
	r, err := f.reader(bytes.NewReader(p))
	if err != nil {
		return nil, err
	}
	if c, ok := r.(io.Closer); ok {
		defer c.Close()
	}
	var out bytes.Buffer
	_, rerr := io.Copy(&out, io.LimitReader(r, maxVmlinux+1))
	if out.Len() > maxVmlinux {
		return nil, fmt.Errorf("decompresses to more than %d MiB", maxVmlinux>>20)
	}
	if isCompleteELF(out.Bytes()) {
		return out.Bytes(), nil
	}
	if rerr != nil {
		if f.name == "xz" {
			return nil, fmt.Errorf("%w (xz kernels built with the x86 BCJ filter are not supported; pass the uncompressed vmlinux instead)", rerr)
		}
		return nil, rerr
	}
	return nil, errors.New("payload is not a complete ELF file")
}

// isCompleteELF reports whether b parses as an ELF file whose program
// segments and section table all lie inside b, so a truncated stream is not
// mistaken for a kernel.
func isCompleteELF(b []byte) bool {
	if !bytes.HasPrefix(b, []byte(elf.ELFMAG)) {
		return false
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return false
	}
	loads := 0
	for _, p := range f.Progs {
		if p.Off+p.Filesz > uint64(len(b)) {
			return false
		}
		if p.Type == elf.PT_LOAD {
			loads++
		}
	}
	for _, s := range f.Sections {
		if s.Type != elf.SHT_NOBITS && s.Offset+s.FileSize > uint64(len(b)) {
			return false
		}
	}
	return loads > 0
}
