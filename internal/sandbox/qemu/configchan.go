package qemu

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
)

// The host side of the config channel (agentapi/vm.go): QEMU connects the
// guest's virtio-serial port "nex.agent" to the driver's agent.sock, the
// guest writes agentapi.ReadyLine when its init is done, and the host answers
// with one JSON agentapi.VMConfig line. The connection then stays open until
// the VM ends: closing it would tell the guest its host went away.

// maxPreReady bounds what a guest may write before its ready line.
const maxPreReady = 64 << 10

// serveConfig accepts QEMU's connection and delivers the guest's config in
// the background, so Start returns as soon as QEMU runs. A guest that does
// not get its config in time is killed: Err tells why.
//
// waitReady is false for snapshot clones: their guest wrote the ready line
// before the template was saved and is blocked reading its config, so
// waiting for it again would wait forever.
func serveConfig(waitReady bool) func(context.Context, *vm) error {
	return func(_ context.Context, v *vm) error {
		go func() {
			err := v.deliverConfig(waitReady)
			if err == nil {
				return
			}
			// QEMU closes the channel when it exits; its exit is then the
			// reason to report, not the channel's end.
			if (errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed)) && v.exitedSoon() {
				return
			}
			v.fail(fmt.Errorf("config channel: %w", err))
		}()
		return nil
	}
}

func (v *vm) deliverConfig(waitReady bool) error {
	deadline := time.Now().Add(v.d.cfg.BootTimeout)
	r, err := v.acceptConfig(deadline)
	if err != nil {
		return err
	}
	conn := *v.conn.Load()
	if waitReady {
		if err := readReady(r); err != nil {
			return fmt.Errorf("waiting for %s: %w", agentapi.ReadyLine, err)
		}
	}
	if err := writeConfig(conn, *v.guestMeta); err != nil {
		return err
	}
	conn.SetDeadline(time.Time{})
	close(v.configured)
	v.log.Info("Config delivered to guest", "waited_for_ready", waitReady)
	// Drain anything the guest writes later so its port never blocks.
	_, _ = io.Copy(io.Discard, r)
	return nil
}

// acceptConfig takes QEMU's connection (QEMU dials while it initializes)
// and bounds everything on it by deadline.
func (v *vm) acceptConfig(deadline time.Time) (*bufio.Reader, error) {
	v.ln.SetDeadline(deadline)
	conn, err := v.ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("accept qemu's connection: %w", err)
	}
	v.conn.Store(&conn)
	conn.SetDeadline(deadline)
	return bufio.NewReader(conn), nil
}

// readReady reads lines until the ready line. Anything before it (nothing,
// normally) is skipped.
func readReady(r *bufio.Reader) error {
	var seen int
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == agentapi.ReadyLine {
			return nil
		}
		if err != nil {
			return err
		}
		if seen += len(line); seen > maxPreReady {
			return errors.New("guest wrote too much without a ready line")
		}
	}
}

// writeConfig gives the guest its identity, the time and fresh entropy: a
// clone restored from a snapshot shares its clock and RNG state with every
// other clone until it gets these.
func writeConfig(w io.Writer, meta agentapi.Metadata) error {
	cfg := agentapi.VMConfig{Metadata: meta, Now: time.Now(), Entropy: make([]byte, 64)}
	if _, err := rand.Read(cfg.Entropy); err != nil {
		return fmt.Errorf("entropy: %w", err)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// awaitReady is the template's version of the config channel: wait for the
// ready line and answer nothing. The guest is saved while it waits for its
// config, holding no identity or credentials that a clone could inherit.
func awaitReady(ctx context.Context, v *vm) error {
	deadline := time.Now().Add(v.d.cfg.BootTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	r, err := v.acceptConfig(deadline)
	if err == nil {
		stop := context.AfterFunc(ctx, func() { (*v.conn.Load()).SetDeadline(time.Unix(1, 0)) })
		defer stop()
		err = readReady(r)
	}
	if err == nil {
		return nil
	}
	if v.exitedSoon() {
		// QEMU's exit closed the channel: that is the reason.
		return fmt.Errorf("guest ended before %s (console: %s): %w", agentapi.ReadyLine, v.path(consoleFile), v.Err())
	}
	return fmt.Errorf("waiting for %s: %w", agentapi.ReadyLine, err)
}

// exitedSoon reports whether QEMU has exited or does so within moments:
// when the config channel breaks, QEMU's exit is usually why.
func (v *vm) exitedSoon() bool {
	select {
	case <-v.Done():
		return true
	case <-time.After(2 * time.Second):
		return false
	}
}
