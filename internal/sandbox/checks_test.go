package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckReadable(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "vmlinux")
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(full, []byte("kernel"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path, info string
		ok         bool
	}{
		{full, full, true},
		{"", "not found", false},
		{filepath.Join(dir, "missing"), "no such file", false},
		{empty, "is empty", false},
		{dir, "is a directory", false},
	} {
		c := CheckReadable("kernel", tc.path, "build it")
		if c.OK != tc.ok || !strings.Contains(c.Info, tc.info) {
			t.Errorf("CheckReadable(%q) = %+v, want ok=%v and info containing %q", tc.path, c, tc.ok, tc.info)
		}
		if c.OK == (c.Fix != "") {
			t.Errorf("CheckReadable(%q): fix %q with ok=%v", tc.path, c.Fix, c.OK)
		}
	}
}

func TestCheckWritableDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	if c := CheckWritableDir("state dir", dir); !c.OK {
		t.Fatalf("%+v", c)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("the check left %v behind", left)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c := CheckWritableDir("state dir", file); c.OK || c.Fix == "" {
		t.Fatalf("a file passed as a dir: %+v", c)
	}
}
