package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/workload"
)

// Under emulation (TCG) a guest's first run of any code costs far more than
// its later runs: QEMU translates the code first, and a snapshot clone's
// QEMU starts with nothing translated. Much of what a deploy runs in the
// guest's kernel and in the agent is the same for every workload: the
// agent's fork and exec with its pipes, the kernel's ELF load, pipe writes
// and exit, the agent's reading of the workload's output into log lines,
// and the workload's TCP connection over loopback to PID 1's forwarder. A
// rehearsal runs that once while the sandbox waits for its deploy, with a
// program of the sandbox's own (Options.Rehearsal), whose lines it splits
// and encodes as a workload's and then drops, and a connection to a
// listener of its own. Then Options.RehearseMore runs what else is the
// sandbox's own: in a QEMU VM, one connection through PID 1's forwarder to
// the node's NATS, which it leaves after the server's INFO, and PID 1's
// copy of a file from the stage disk (vminit.FileServer.Rehearse), which a
// deploy of an artifact not staged ahead runs first. No workload code
// runs, and nothing but that connection leaves the guest. In a VM the
// program is the image's guestimage.RehearsalFile: a Go program (this
// binary) would rehearse a Go start too, but its run dirtied ≈ 28 MiB of a
// clone's memory, which then stayed with the idle clone.

// rehearsalTimeout bounds a rehearsal.
const rehearsalTimeout = 10 * time.Second

// startRehearsal runs the rehearsal in the background. A deploy or a stop
// ends it first (endRehearsal).
func (a *agent) startRehearsal() {
	ctx, cancel := context.WithTimeout(a.runCtx, rehearsalTimeout)
	done := make(chan struct{})
	a.mu.Lock()
	if a.rehearsalOver { // a deploy or a stop came first
		a.mu.Unlock()
		cancel()
		return
	}
	a.rehearsal = &rehearsal{cancel: cancel, done: done}
	a.mu.Unlock()
	go func() {
		defer close(done)
		defer cancel()
		t0 := time.Now()
		err := a.rehearse(ctx)
		switch {
		case err == nil:
			a.log.Info("rehearsed a deploy", "took", time.Since(t0).Round(time.Millisecond))
		case ctx.Err() != nil:
			a.log.Debug("rehearsal cut short", keyError, err)
		default:
			a.log.Warn("rehearsal failed; deploys work, but their first run is slower", keyError, err)
		}
	}()
}

type rehearsal struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// endRehearsal stops a rehearsal under way and waits until it has ended,
// its process with it; none starts after it. Then Options.Quiesce ends
// what else ran while the sandbox waited.
func (a *agent) endRehearsal() {
	a.mu.Lock()
	r := a.rehearsal
	a.rehearsalOver = true
	a.mu.Unlock()
	if r != nil {
		r.cancel()
		<-r.done
	}
	if a.o.Quiesce != nil {
		a.o.Quiesce()
	}
}

func (a *agent) rehearse(ctx context.Context) error {
	if err := loopbackRoundTrip(ctx); err != nil {
		return fmt.Errorf("loopback: %w", err)
	}
	rt, ok := a.o.Runtimes["native"]
	if !ok {
		return errors.New("no native runtime")
	}
	argv := a.o.Rehearsal
	// Split and encoded like a workload's output, then dropped.
	out := newLineWriter("stdout", func(stream, text string) {
		_, _ = json.Marshal(agentapi.LogLine{Stream: stream, Text: text, Time: time.Now()})
	})
	h, err := rt.Start(ctx, workload.Spec{
		Name: argv[0], Path: argv[0], Args: argv[1:],
		Env: []string{"PATH=" + defaultPath}, Dir: a.o.WorkDir,
		Stdout: out, Stderr: out,
	})
	if err != nil {
		return err
	}
	ex, err := h.Wait(ctx)
	if err != nil {
		// Cut short: the process must be gone before a workload starts.
		sctx, cancel := context.WithTimeout(context.Background(), stopGrace)
		defer cancel()
		return errors.Join(err, h.Stop(sctx))
	}
	if ex.Code != 0 {
		return fmt.Errorf("%s: %s", argv[0], ex.Message)
	}
	if err := a.rehearseDeploy(); err != nil {
		return fmt.Errorf("the agent's part: %w", err)
	}
	if a.o.RehearseMore != nil {
		return a.o.RehearseMore(ctx)
	}
	return nil
}

// rehearseDeploy runs the agent's own handling of a deploy on a made-up
// one, short of the start: its request decoded, the workload's environment
// made, a file staged ahead moved into place (a file of the rehearsal's
// own, removed after), the started event and the answer encoded.
func (a *agent) rehearseDeploy() error {
	staged, err := os.CreateTemp(a.o.WorkDir, ".rehearsal-*")
	if err != nil {
		return err
	}
	defer os.Remove(staged.Name())
	_, err = staged.Write([]byte("rehearsal\n"))
	if cerr := staged.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	req, err := json.Marshal(agentapi.Deploy{WorkloadID: "rehearsal", Name: "rehearsal", Namespace: "rehearsal",
		Type: "native", Argv: []string{"rehearsal"}, Env: map[string]string{"REHEARSAL": "1"},
		Hash: "rehearsal", Size: 10, NATSUser: "rehearsal", NATSPassword: "rehearsal", StagedPath: staged.Name()})
	if err != nil {
		return err
	}
	var d agentapi.Deploy
	if err := json.Unmarshal(req, &d); err != nil {
		return err
	}
	if err := checkName(d.Name); err != nil {
		return err
	}
	_ = a.environment(&d)
	path := staged.Name() + ".taken"
	defer os.Remove(path)
	if err := takeStaged(&d, path); err != nil {
		return err
	}
	if _, err := json.Marshal(startedEvent(&d)); err != nil {
		return err
	}
	_, err = json.Marshal(agentapi.Reply{OK: true})
	return err
}

// loopbackRoundTrip connects to a listener of its own on 127.0.0.1 and
// sends a byte each way. It ends early when ctx does. (Accept returns at
// once: the dial has already put the connection in its queue.)
func loopbackRoundTrip(ctx context.Context) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		return err
	}
	defer s.Close()
	defer context.AfterFunc(ctx, func() {
		c.SetDeadline(time.Unix(1, 0))
		s.SetDeadline(time.Unix(1, 0))
	})()
	b := []byte{1}
	for _, pair := range [][2]net.Conn{{c, s}, {s, c}} {
		if _, err := pair[0].Write(b); err != nil {
			return err
		}
		if _, err := pair[1].Read(b); err != nil {
			return err
		}
	}
	return nil
}
