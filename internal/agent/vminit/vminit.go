// Package vminit is the agent as PID 1 of a microVM: it mounts the kernel's
// file systems, loads the virtio modules the guest image carries, brings up
// the network, learns its identity from the host, sets the clock and seeds
// randomness, forwards the workloads' NATS, then runs the agent and powers
// the VM off when the agent is done.
//
// The agent runs inside PID 1, not as a child of it: under emulation a
// second Go process's start (runtime and package initialisation, ≈ 0.15–
// 0.25 s of the only vCPU) was a good part of a cold boot, and handing it
// its identity a part of a clone's. Every orphan in the guest is
// re-parented to PID 1, which reaps it; the workloads the agent starts, and
// waits for with os/exec, are started through package reaper, which keeps
// PID 1's reaping off them (a wait4(-1) would steal their exit status).
package vminit

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// A step is one named thing init does; the sequence is data (see
// bootSteps), run by runSteps, so a snapshot-restore path can drop or swap
// steps without touching the loop.
type step struct {
	name string
	run  func(ctx context.Context) error
	// optional steps log their failure and init goes on.
	optional bool
}

// runSteps runs steps in order, logging each with how long it took, and
// stops at the first failure of a required step. Steps that went well are
// logged at debug level (nex_debug=1): every line costs the guest a write
// to an emulated UART, and a snapshot clone's steps are on the path to its
// agent's handshake.
func runSteps(ctx context.Context, log *slog.Logger, steps []step) error {
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		err := s.run(ctx)
		took := time.Since(start).Round(time.Microsecond)
		switch {
		case err == nil:
			log.Debug("init", keyStep, s.name, keyTook, took)
		case s.optional:
			log.Warn("init", keyStep, s.name, keyTook, took, keyError, err)
		default:
			log.Error("init", keyStep, s.name, keyTook, took, keyError, err)
			return fmt.Errorf("init step %s: %w", s.name, err)
		}
	}
	return nil
}

// Log keys.
const (
	keyStep  = "step"
	keyTook  = "took"
	keyError = "error"
)
