// Package agent is what runs inside every sandbox: it connects to the node's
// internal NATS with its own credentials, handshakes, fetches and runs the
// workload it is given, streams its output and lifecycle back, and answers
// pings. The same code runs as a child process (process sandbox) and as PID 1
// of a microVM (see package agent/vminit).
package agent

import (
	"context"
	"errors"
	"log/slog"

	"github.com/nex-engine/nex/internal/agentapi"
)

// Options configure Run.
type Options struct {
	Meta agentapi.Metadata
	Log  *slog.Logger
	// WorkDir holds the fetched artifact and the workload's files.
	WorkDir string
	// WorkloadNATSAddr is the host:port workloads are told to use for NATS
	// (NATS_URL). Empty: the host:port of Meta.NATSURL.
	WorkloadNATSAddr string
	// PID1 is set when the agent is a VM's init.
	PID1 bool
}

// Run runs the agent until its workload is undeployed, its connection to the
// node is lost for good, or ctx ends.
func Run(ctx context.Context, o Options) error {
	return errors.New("agent: not written yet")
}
