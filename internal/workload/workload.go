// Package workload defines how an agent runs the one workload of its sandbox:
// a Runtime starts it from an artifact on disk and hands back a Handle to
// wait for it and stop it. Implementations live in the child packages
// (native runs an executable; JavaScript and Wasm runtimes plug in the same
// way), so the agent never needs to know what kind of thing it runs.
package workload

import (
	"context"
	"io"
)

// Spec is one workload to start.
type Spec struct {
	// Name is the workload's name; runtimes may show it as argv[0].
	Name string
	// Path is the verified artifact on disk.
	Path string
	// Args are the arguments after argv[0].
	Args []string
	// Env is the complete environment as KEY=value pairs; nothing of the
	// agent's own environment leaks in.
	Env []string
	// Dir is the working directory.
	Dir string
	// Stdout and Stderr receive the workload's output. The runtime writes to
	// them until the workload ends and has written everything before Wait
	// returns, so a caller can flush them right after.
	Stdout, Stderr io.Writer
}

// Runtime starts workloads of one type.
type Runtime interface {
	// Start returns once the workload runs, or why it could not start. ctx
	// bounds the start only: the workload lives until it ends or is stopped.
	Start(ctx context.Context, spec Spec) (Handle, error)
}

// Handle is a started workload.
type Handle interface {
	// Wait blocks until the workload has ended and its output is written,
	// or ctx ends.
	Wait(ctx context.Context) (Exit, error)
	// Stop asks the workload to end and forces it once ctx is done; it
	// returns once the workload has ended. Safe after exit and more than once.
	Stop(ctx context.Context) error
}

// Exit tells how a workload ended.
type Exit struct {
	// Code is the exit status; 128+n when killed by signal n, as shells say.
	Code int
	// Message says it in words, e.g. "exited with code 3", "killed by signal 9".
	Message string
	// OutOfMemory is set when the kernel's OOM killer ended it (its
	// Message says so too).
	OutOfMemory bool
}
