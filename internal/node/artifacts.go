package node

import (
	"container/list"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// DefaultArtifactCacheBytes bounds the artifacts kept after their last
// workload ended, so a redeploy of the same bytes skips the download.
const DefaultArtifactCacheBytes = 512 << 20

// artifactStore is the node's content-addressed artifact store: one file per
// sha256, verified once when stored, shared by every workload that runs it.
// Files no workload uses stay as a bounded LRU cache.
type artifactStore struct {
	dir   string
	limit int64

	mu      sync.Mutex
	entries map[string]*artifactEntry
	idle    *list.List // of hash, least recently used first
	idleSz  int64
}

type artifactEntry struct {
	mu     sync.Mutex // held while the file is being fetched
	ready  bool
	size   int64
	refs   int
	idleEl *list.Element
}

func newArtifactStore(dir string, limit int64) (*artifactStore, error) {
	// Nothing from a previous run is trusted: its verification is not ours.
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &artifactStore{dir: dir, limit: limit, entries: map[string]*artifactEntry{}, idle: list.New()}, nil
}

func (s *artifactStore) path(hash string) string { return filepath.Join(s.dir, hash) }

// acquire returns the verified file of hash, calling fetch to store it at
// the given temporary path when it is not here yet. fetch must check the
// bytes against hash. The caller releases the reference.
func (s *artifactStore) acquire(hash string, fetch func(tmp string) (int64, error)) (path string, size int64, cached bool, err error) {
	s.mu.Lock()
	e := s.entries[hash]
	if e == nil {
		e = &artifactEntry{}
		s.entries[hash] = e
	}
	e.refs++
	s.unidle(e)
	s.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ready {
		return s.path(hash), e.size, true, nil
	}
	tmp := s.path(hash) + ".part"
	size, err = fetch(tmp)
	if err == nil {
		err = os.Rename(tmp, s.path(hash))
	}
	if err != nil {
		_ = os.Remove(tmp)
		s.release(hash)
		return "", 0, false, err
	}
	e.ready, e.size = true, size
	return s.path(hash), size, false, nil
}

// hold takes a reference to hash's file when the store has it and no fetch
// of it is under way, without ever fetching it; the caller releases it.
func (s *artifactStore) hold(hash string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[hash]
	if e == nil || !e.mu.TryLock() { // absent, or being fetched
		return "", false
	}
	ready := e.ready
	e.mu.Unlock()
	if !ready {
		return "", false
	}
	e.refs++
	s.unidle(e)
	return s.path(hash), true
}

// unidle takes e off the idle list, if it is there; s.mu is held.
func (s *artifactStore) unidle(e *artifactEntry) {
	if e.idleEl != nil {
		s.idle.Remove(e.idleEl)
		s.idleSz -= e.size
		e.idleEl = nil
	}
}

// release drops a reference; unused files stay cached within the limit.
func (s *artifactStore) release(hash string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[hash]
	if e == nil {
		return
	}
	e.refs--
	if e.refs > 0 {
		return
	}
	if !e.ready || e.size > s.limit {
		delete(s.entries, hash)
		_ = os.Remove(s.path(hash))
		return
	}
	e.idleEl = s.idle.PushBack(hash)
	s.idleSz += e.size
	for s.idleSz > s.limit {
		oldest := s.idle.Front()
		h := oldest.Value.(string)
		s.idle.Remove(oldest)
		old := s.entries[h]
		s.idleSz -= old.size
		delete(s.entries, h)
		_ = os.Remove(s.path(h))
	}
}

// inUse counts artifacts some workload references (tests).
func (s *artifactStore) inUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.entries {
		if e.refs > 0 {
			n++
		}
	}
	return n
}

func digestError(got, want string) error {
	return fmt.Errorf("%w: its sha256 is %s but the workload JWT says %s", ErrArtifact, got, want)
}
