package node

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestArtifactStoreSharesCachesAndEvicts(t *testing.T) {
	dir := t.TempDir()
	s, err := newArtifactStore(dir, 10)
	if err != nil {
		t.Fatal(err)
	}
	fetches := 0
	fetch := func(size int) func(string) (int64, error) { return writeBytes(size, &fetches) }
	p1, _, cached, err := s.acquire("a", fetch(6))
	if err != nil || cached {
		t.Fatal(err, cached)
	}
	if _, _, cached, _ := s.acquire("a", fetch(6)); !cached || fetches != 1 {
		t.Fatalf("second acquire fetched again (%d fetches)", fetches)
	}
	s.release("a")
	s.release("a")
	// Unused but within the limit: still cached.
	if _, err := os.Stat(p1); err != nil {
		t.Fatal("idle artifact removed within the cache limit")
	}
	if _, _, cached, _ := s.acquire("a", fetch(6)); !cached {
		t.Fatal("idle artifact not reused")
	}
	s.release("a")
	// b pushes the idle total over 10 bytes: a, the least recently used, goes.
	if _, _, _, err := s.acquire("b", fetch(6)); err != nil {
		t.Fatal(err)
	}
	s.release("b")
	if _, err := os.Stat(p1); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("least recently used artifact not evicted")
	}
	// A failed fetch leaves nothing.
	if _, _, _, err := s.acquire("c", func(string) (int64, error) { return 0, errors.New("boom") }); err == nil {
		t.Fatal("failed fetch succeeded")
	}
	left, _ := filepath.Glob(filepath.Join(dir, "c*"))
	if len(left) != 0 || s.inUse() != 0 {
		t.Fatalf("left %v, in use %d", left, s.inUse())
	}
}

// hold never fetches: it takes a stored artifact (out of the idle list, so
// it is not evicted while held) or nothing.
func TestArtifactStoreHold(t *testing.T) {
	s, err := newArtifactStore(t.TempDir(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := s.hold("a"); ok {
		t.Fatal("held an artifact the store never had")
	}
	if _, _, _, err := s.acquire("a", writeBytes(6, nil)); err != nil {
		t.Fatal(err)
	}
	s.release("a") // idle, cached
	p, ok := s.hold("a")
	if !ok || s.inUse() != 1 {
		t.Fatalf("hold of a cached artifact: %q, %v, in use %d", p, ok, s.inUse())
	}
	// Another artifact would evict a were it idle; held, it stays.
	if _, _, _, err := s.acquire("b", writeBytes(6, nil)); err != nil {
		t.Fatal(err)
	}
	s.release("b")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("held artifact evicted: %v", err)
	}
	s.release("a")
	if s.inUse() != 0 {
		t.Fatalf("in use %d after release", s.inUse())
	}
}

// writeBytes is a fetch that writes size zero bytes, counting its calls
// in fetches when that is not nil.
func writeBytes(size int, fetches *int) func(string) (int64, error) {
	return func(tmp string) (int64, error) {
		if fetches != nil {
			*fetches++
		}
		return int64(size), os.WriteFile(tmp, make([]byte, size), 0o600)
	}
}
