package sandboxtest

import (
	"context"
	"strings"
	"testing"
	"time"
)

// deadSandbox ended at once, its console saying how far it got.
type deadSandbox struct{ done chan struct{} }

func (deadSandbox) ID() string                 { return "dead" }
func (deadSandbox) PID() int                   { return 0 }
func (deadSandbox) Stop(context.Context) error { return nil }
func (d deadSandbox) Done() <-chan struct{}    { return d.done }
func (deadSandbox) Err() error                 { return nil }
func (deadSandbox) ConsoleTail(int) string     { return "Booting from ROM.." }

// A watched sandbox that ends without a handshake ends the wait with how
// it ended, not at the wait's deadline.
func TestWaitHandshakeEndsWithTheSandbox(t *testing.T) {
	h := NewHarness(t)
	a := h.AddAgent("never")
	sb := deadSandbox{done: make(chan struct{})}
	close(sb.done)
	a.Watch(sb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := a.WaitHandshake(ctx)
	if err == nil || !strings.Contains(err.Error(), "the sandbox ended (it ended by itself); its console ended with: Booting from ROM..") {
		t.Fatalf("err = %v; want how the sandbox ended and its console", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the wait ran to its deadline")
	}
}
