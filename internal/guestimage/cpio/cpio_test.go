package cpio

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

func sample() []Record {
	return []Record{
		Dir("dev", 0o755),
		CharDev("dev/console", 0o600, 5, 1),
		File("init", 0o755, []byte("#!fake elf")),
		Dir("modules", 0o755),
		File("modules/order", 0o644, []byte("a.ko\nb.ko\n")),
		File("empty", 0o644, nil),
		Symlink("sbin", "/"),
		File("odd", 0o600, []byte{1, 2, 3}), // exercises data padding
	}
}

func write(t *testing.T, recs []Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	in := sample()
	b := write(t, in)
	if len(b)%4 != 0 {
		t.Fatalf("archive length %d is not 4-aligned", len(b))
	}
	r := NewReader(bytes.NewReader(b))
	var out []Record
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, rec)
	}
	if !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip differs:\n in  %+v\n out %+v", in, out)
	}
}

func TestDeterministic(t *testing.T) {
	a, b := write(t, sample()), write(t, sample())
	if !bytes.Equal(a, b) {
		t.Fatal("same records gave different bytes")
	}
	// Header of the first record: inode 1, mode dir|0755, uid/gid 0, nlink 2, mtime 0.
	want := "070701" + "00000001" + "000041ed" + "00000000" + "00000000" + "00000002" + "00000000"
	if got := string(a[:len(want)]); got != want {
		t.Fatalf("first header = %s, want %s", got, want)
	}
}

func TestRejects(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.WriteRecord(Record{Name: "x", Mode: TypeDir, Data: []byte("no")}); err == nil {
		t.Fatal("a directory with data was accepted")
	}
	if err := w.WriteRecord(Record{Name: "", Mode: TypeRegular}); err == nil {
		t.Fatal("an empty name was accepted")
	}
	if _, err := NewReader(bytes.NewReader([]byte("070702"))).Next(); err == nil {
		t.Fatal("a truncated archive was accepted")
	}
}
