// Package sandbox defines what a sandbox driver is: something that starts an
// isolated place whose agent connects back to the node's internal NATS, and
// stops it. Implementations live in the child packages (process, qemu,
// firecracker); sandboxtest is the conformance suite every one must pass.
package sandbox

import (
	"context"
	"errors"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
)

// Spec describes one sandbox to start.
type Spec struct {
	ID string
	// Dir is the sandbox's private directory under the node's state dir. The
	// caller creates it and removes it after Stop; the driver keeps every
	// file of the sandbox (pid file, sockets, console log) inside it.
	Dir string
	// Agent is the agent's metadata as seen from the host: Agent.NATSURL is
	// the internal server's loopback URL. A VM driver rewrites the URL to
	// what the guest reaches (its forward of that address).
	Agent     agentapi.Metadata
	VCPU      int
	MemoryMiB int
}

// Driver starts sandboxes.
type Driver interface {
	// Name is the driver's config name: process, qemu, firecracker.
	Name() string
	// Start launches a sandbox and returns once it is running; the agent's
	// handshake is awaited by the caller on the internal NATS.
	Start(ctx context.Context, spec Spec) (Sandbox, error)
}

// Sandbox is one running sandbox.
type Sandbox interface {
	ID() string
	// PID of the host process that holds the sandbox (agent or VMM).
	PID() int
	// Stop asks the sandbox to end, then forces it; it returns once the
	// host process is gone. Safe to call more than once and after exit.
	Stop(ctx context.Context) error
	// Done is closed when the sandbox's host process has exited.
	Done() <-chan struct{}
	// Err tells why the sandbox ended; valid after Done is closed.
	Err() error
}

// Attrs is implemented by sandboxes with more to tell in the node's one
// "Machine started" line than their id and PID (a VM: its accelerator,
// whether it was restored from a snapshot, where its console log is), as
// slog key-value pairs.
type Attrs interface{ LogAttrs() []any }

// LogAttrs is sb's Attrs, or nothing.
func LogAttrs(sb Sandbox) []any {
	if a, ok := sb.(Attrs); ok {
		return a.LogAttrs()
	}
	return nil
}

// ConsoleTailer is implemented by sandboxes whose guest writes a console
// log (the VM drivers): its last lines are often all there is to say why a
// guest died before its agent handshook.
type ConsoleTailer interface {
	// ConsoleTail returns at most n of the console's last non-blank lines,
	// terminal control sequences removed; "" when there are none.
	ConsoleTail(n int) string
}

// ConsoleTail is sb's ConsoleTail(n), or "".
func ConsoleTail(sb Sandbox, n int) string {
	if c, ok := sb.(ConsoleTailer); ok {
		return c.ConsoleTail(n)
	}
	return ""
}

// Unsafe is implemented by drivers that give no isolation; nodes using them
// tag themselves nex.unsafe=true.
type Unsafe interface{ Unsafe() bool }

// Stager is implemented by sandboxes whose agent shares the host's
// filesystem (the process sandbox): the node copies the artifact, already
// verified, into the sandbox's own work dir instead of streaming it over
// NATS. The agent still checks size and hash before it runs it. Stage
// returns the path the agent sees; ctx bounds the transfer (the deploy's).
//
// A Stage that fails with ErrNoRoom found the file too big for the sandbox:
// the agent's own fetch would fail the same, so the deploy fails with it.
type Stager interface {
	Stage(ctx context.Context, src, name string) (string, error)
}

// Prestager is implemented by sandboxes whose Stage costs enough to be
// worth doing before a deploy asks for it: a VM's guest copies the file
// into its RAM (≈ 0.25 s for 9 MB under emulation). A node stages the
// artifact it deployed last into each such sandbox before it joins the warm
// pool (config vm_prestage), so a redeploy of that artifact, the common case
// when a service scales out, skips the copy. Prestage says whether this
// sandbox can take a file ahead (a VM without a file port cannot). Unstage
// deletes the file staged ahead under name (as given to Stage; deleting one
// that is not there is no error). A deploy of another artifact calls it
// before it stages its own, so the guest never holds both, and the file
// costs guest memory only while the sandbox waits in the pool (if Unstage
// fails, the agent deletes the file: agentapi.Deploy.Unstage). When the
// node deploys another artifact, it also restages the sandboxes waiting in
// the pool the same way: Unstage, then Stage.
type Prestager interface {
	Stager
	Prestage() bool
	Unstage(ctx context.Context, name string) error
}

// TrialStarter is implemented by sandboxes that can give a file staged
// ahead a trial start (internal/trial): StageTrial is Prestager's Stage,
// after which the sandbox runs the file once, jailed, with args, while it
// waits for its deploy, so under emulation the deploy finds its code
// translated. A node uses it for its prestage (config vm_trial_start).
type TrialStarter interface {
	StageTrial(ctx context.Context, src, name string, args []string) (string, error)
}

// RefillPacer is implemented by drivers that say how long a warm pool
// holds back the refill a deploy causes, so the new sandbox does not start
// on the same cores at the moment the deployed workload does.
type RefillPacer interface {
	RefillDelay() time.Duration
}

// Describer is implemented by drivers with state a user should see in
// `nex node info`: how their sandboxes start (the qemu driver: restored
// from which snapshot template, or booted cold and why).
type Describer interface {
	Describe() string
}

// Check is one line of a preflight report.
type Check struct {
	Name string
	OK   bool
	Info string // what was found
	Fix  string // the exact fix when !OK, or what to do about a Warning
	// Warning marks a passed check whose finding a user should act on.
	Warning bool
}

// Preflighter is implemented by drivers that need things from the host.
type Preflighter interface {
	Preflight(ctx context.Context) []Check
}

// ErrStopped is returned by Err after a requested Stop.
var ErrStopped = errors.New("sandbox stopped")

// ErrNoRoom is a Stage's refusal of a file that does not fit in the
// sandbox (a VM keeps it in guest RAM).
var ErrNoRoom = errors.New("the file does not fit in the sandbox")

// IsUnsafe reports whether d gives no isolation.
func IsUnsafe(d Driver) bool {
	u, ok := d.(Unsafe)
	return ok && u.Unsafe()
}

// tailBytes is how much of a log's end FileTail reads.
const tailBytes = 16 << 10

// controlSeq matches terminal control sequences (SeaBIOS resets and clears
// the screen with them: ESC c, ESC [2J) and other control bytes but tab.
var controlSeq = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-~]|[\x00-\x08\x0b-\x1f\x7f]`)

// FileTail returns at most n of the last non-blank lines of the log at
// path (a guest's console, an agent's output), joined by " | ", without
// control sequences; "" when there is no such file or nothing in it.
func FileTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > tailBytes {
		_, _ = f.Seek(st.Size()-tailBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(io.LimitReader(f, tailBytes))
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(controlSeq.ReplaceAllString(l, "")); l != "" {
			lines = append(lines, l)
		}
	}
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}
