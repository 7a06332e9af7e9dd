package qemu

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func TestRemoveOtherGenerations(t *testing.T) {
	dir := t.TempDir()
	mk := func(name, gen string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, ramImage), []byte("ram"), 0o600); err != nil {
			t.Fatal(err)
		}
		if gen != "" {
			if err := os.WriteFile(filepath.Join(p, genFile), []byte(gen+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	current := mk("1111111111111111", "gen-now")
	otherShape := mk("2222222222222222", "gen-now")
	older := mk("3333333333333333", "gen-before")
	unmarked := mk("4444444444444444", "")
	building := mk("5555555555555555.tmp-42", "")
	file := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}

	removeOtherGenerations(dir, "gen-now", slog.New(slog.DiscardHandler))

	for p, keep := range map[string]bool{current: true, otherShape: true, older: false, unmarked: false,
		building: true, file: true} {
		_, err := os.Stat(p)
		if keep && err != nil {
			t.Errorf("%s was removed: %v", filepath.Base(p), err)
		}
		if !keep && !os.IsNotExist(err) {
			t.Errorf("%s is still there", filepath.Base(p))
		}
	}
}
