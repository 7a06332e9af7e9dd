// Package cpio reads and writes the "newc" cpio format the Linux kernel
// unpacks as an initramfs. The writer is deterministic: it never looks at the
// host's files, clock or users, and numbers inodes in write order, so the same
// records always give the same bytes.
package cpio

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// File type bits of Record.Mode (the st_mode values cpio carries).
const (
	TypeMask    = 0o170000
	TypeDir     = 0o040000
	TypeRegular = 0o100000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
)

const (
	magic      = "070701"
	headerLen  = 110
	trailer    = "TRAILER!!!"
	maxNameLen = 4096
)

// Record is one archive entry. Ownership and times are not represented: the
// writer stores uid/gid 0 and mtime 0 for every entry.
type Record struct {
	Name string // path without a leading slash, e.g. "dev/console"
	Mode uint32 // type bits | permission bits
	// Data is a regular file's contents or a symlink's target.
	Data []byte
	// RMajor, RMinor are a device node's numbers.
	RMajor, RMinor uint32
}

// Dir, File, Symlink and CharDev build records.
func Dir(name string, perm uint32) Record { return Record{Name: name, Mode: TypeDir | perm} }
func File(name string, perm uint32, data []byte) Record {
	return Record{Name: name, Mode: TypeRegular | perm, Data: data}
}
func Symlink(name, target string) Record {
	return Record{Name: name, Mode: TypeSymlink | 0o777, Data: []byte(target)}
}
func CharDev(name string, perm, major, minor uint32) Record {
	return Record{Name: name, Mode: TypeChar | perm, RMajor: major, RMinor: minor}
}

// Writer writes records in the order given. The caller orders them (parents
// before children) so the archive is reproducible.
type Writer struct {
	w      io.Writer
	off    int64
	ino    uint32
	closed bool
}

// NewWriter returns a writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteRecord appends one record.
func (w *Writer) WriteRecord(r Record) error {
	if w.closed {
		return errors.New("cpio: write after close")
	}
	if r.Name == "" || r.Name == trailer || len(r.Name) >= maxNameLen {
		return fmt.Errorf("cpio: bad name %q", r.Name)
	}
	if t := r.Mode & TypeMask; len(r.Data) > 0 && t != TypeRegular && t != TypeSymlink {
		return fmt.Errorf("cpio: %s: only files and symlinks carry data", r.Name)
	}
	w.ino++
	nlink := uint32(1)
	if r.Mode&TypeMask == TypeDir {
		nlink = 2
	}
	return w.write(w.ino, r, nlink)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.write(0, Record{Name: trailer}, 1)
}

func (w *Writer) write(ino uint32, r Record, nlink uint32) error {
	fields := []uint32{
		ino, r.Mode, 0, 0, nlink, 0, // ino mode uid gid nlink mtime
		uint32(len(r.Data)), 0, 0, // filesize devmajor devminor
		r.RMajor, r.RMinor, uint32(len(r.Name) + 1), 0, // rdevmajor rdevminor namesize check
	}
	buf := make([]byte, 0, headerLen+len(r.Name)+4)
	buf = append(buf, magic...)
	for _, f := range fields {
		buf = fmt.Appendf(buf, "%08x", f)
	}
	buf = append(buf, r.Name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if err := w.emit(buf); err != nil {
		return err
	}
	if len(r.Data) == 0 {
		return nil
	}
	if err := w.emit(r.Data); err != nil {
		return err
	}
	return w.emit(make([]byte, pad4(len(r.Data))))
}

func (w *Writer) emit(b []byte) error {
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err != nil {
		return fmt.Errorf("cpio: write: %w", err)
	}
	return nil
}

func pad4(n int) int { return (4 - n%4) % 4 }

// Reader reads records back; it exists for tests and for inspecting images.
type Reader struct {
	r *bufio.Reader
}

// NewReader returns a reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReader(r)} }

// Next returns the next record, or io.EOF after the trailer.
func (r *Reader) Next() (Record, error) {
	hdr := make([]byte, headerLen)
	if _, err := io.ReadFull(r.r, hdr); err != nil {
		return Record{}, fmt.Errorf("cpio: header: %w", noEOF(err))
	}
	if string(hdr[:6]) != magic {
		return Record{}, fmt.Errorf("cpio: bad magic %q", hdr[:6])
	}
	var f [13]uint32
	for i := range f {
		v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return Record{}, fmt.Errorf("cpio: header field %d: %w", i, err)
		}
		f[i] = uint32(v)
	}
	nameSize := int(f[11])
	if nameSize < 1 || nameSize > maxNameLen {
		return Record{}, fmt.Errorf("cpio: bad name size %d", nameSize)
	}
	name := make([]byte, nameSize+pad4(headerLen+nameSize))
	if _, err := io.ReadFull(r.r, name); err != nil {
		return Record{}, fmt.Errorf("cpio: name: %w", noEOF(err))
	}
	rec := Record{Name: string(name[:nameSize-1]), Mode: f[1], RMajor: f[9], RMinor: f[10]}
	if rec.Name == trailer {
		return Record{}, io.EOF
	}
	size := int(f[6])
	data := make([]byte, size+pad4(size))
	if _, err := io.ReadFull(r.r, data); err != nil {
		return Record{}, fmt.Errorf("cpio: %s: data: %w", rec.Name, noEOF(err))
	}
	if size > 0 {
		rec.Data = data[:size]
	}
	return rec, nil
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
