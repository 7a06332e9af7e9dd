package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
)

// deadGuestDriver starts sandboxes whose guest is gone at once, before an
// agent could handshake, with a console that says how far it got: what a
// VM looks like to the node when its firmware or kernel fails.
type deadGuestDriver struct{}

func (deadGuestDriver) Name() string { return "deadguest" }

func (deadGuestDriver) Start(_ context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	done := make(chan struct{})
	close(done)
	return deadGuest{id: spec.ID, done: done}, nil
}

type deadGuest struct {
	id   string
	done chan struct{}
}

func (g deadGuest) ID() string               { return g.id }
func (deadGuest) PID() int                   { return 0 }
func (deadGuest) Stop(context.Context) error { return nil }
func (g deadGuest) Done() <-chan struct{}    { return g.done }
func (deadGuest) Err() error                 { return nil } // a guest that reset with -no-reboot: QEMU exits 0
func (deadGuest) ConsoleTail(n int) string   { return "SeaBIOS (version 1.16.3) | Booting from ROM.." }
func (deadGuest) LogAttrs() []any            { return nil }

var _ sandbox.ConsoleTailer = deadGuest{}

// A sandbox that ends before its agent handshook fails with an event that
// says how it ended and quotes the end of its console, since its dir, the
// console log's home, is removed with it.
func TestSandboxDeadBeforeHandshakeQuotesItsConsole(t *testing.T) {
	h := newHarnessWithDriver(t, nil, func(*config.Config) (driverOf, error) { return deadGuestDriver{}, nil })
	evs := h.events(api.EventSubject(api.SystemNamespace, api.EventSandboxFailed))
	var ev api.SandboxFailedEvent
	eventually(t, 30*time.Second, "a sandbox failed event", func() bool { return evs.last(api.EventSandboxFailed, &ev) })
	for _, want := range []string{
		"exited before its agent handshook: it ended by itself",
		"its console ended with: SeaBIOS (version 1.16.3) | Booting from ROM..",
	} {
		if !strings.Contains(ev.Message, want) {
			t.Errorf("event message %q lacks %q", ev.Message, want)
		}
	}
	if ev.SandboxID == "" || ev.Driver != "deadguest" {
		t.Errorf("event %+v", ev)
	}
}
