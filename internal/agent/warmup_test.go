package agent

import (
	"context"
	"runtime"
	"testing"
	"time"
)

// WarmUp connects, subscribes and handshakes against the peer it plays, and
// leaves nothing running: a snapshot template calls it, and every clone
// would carry whatever it left.
func TestWarmUp(t *testing.T) {
	before := runtime.NumGoroutine()
	if err := WarmUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines after WarmUp, %d before:\n%s", runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestMatchSub(t *testing.T) {
	subs := map[string]string{"_INBOX.x.abc.*": "5", "a.b": "1"}
	for _, c := range []struct {
		subject, sid string
		ok           bool
	}{{"_INBOX.x.abc.tok", "5", true}, {"a.b", "1", true}, {"a.c", "", false}, {"", "", false}, {"nodot", "", false}} {
		if sid, ok := matchSub(subs, c.subject); sid != c.sid || ok != c.ok {
			t.Errorf("matchSub(%q) = %q, %v; want %q, %v", c.subject, sid, ok, c.sid, c.ok)
		}
	}
}
