package sandboxtest

import (
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Log sends a driver's log, debug lines included, to the test's log (shown
// on failure or with -v); lines from goroutines that outlive the test are
// dropped, since testing panics on a Log after the test ended.
func Log(tb testing.TB) *slog.Logger {
	w := &tbWriter{tb: tb}
	tb.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct {
	tb   testing.TB
	mu   sync.Mutex
	done bool
}

func (w *tbWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.tb.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}
