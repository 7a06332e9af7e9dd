// Package trial gives a program staged into a VM ahead of its deploy a
// trial start: one run, jailed, while the VM waits for that deploy.
//
// Under emulation (TCG) a program's first run in a VM costs far more than
// its later runs: QEMU translates its code first, and a snapshot clone's
// QEMU starts with nothing translated. QEMU keeps a translation by the
// guest-physical page of the code, and a later exec of the same file maps
// the same page-cache pages, so what a trial start runs is translated when
// the deploy runs the same file (its staged file is renamed into place,
// the same inode).
//
// Nothing of a trial start may be seen outside it, so the program runs
//
//   - with its root (chroot) in a directory of its own that holds only a
//     hard link to its file, as user and group nobody (65534), so it can
//     neither read nor write a file of the VM's;
//   - in a network namespace of its own, with a loopback and nothing else,
//     where its NATS URL names a server of the trial's own (server), which
//     answers its connection and sends each of its subscriptions one
//     request: no way to the node's NATS or anywhere else;
//   - in a PID namespace of its own, so it sees no other process and
//     nothing it starts outlives it;
//   - with the arguments it is given (a node's prestage passes those of
//     the artifact's last deploy), an environment that holds only that
//     NATS URL, and /dev/null for its input and output;
//   - until every request it was sent has its reply, for at most
//     Runner.Timeout, and no longer than until a deploy or a stop comes
//     (Runner.End): then it is killed.
//
// A workload therefore runs its start (the language runtime's, its
// packages' initialisation, its NATS connection and subscriptions, its
// handler of a request) before the deploy runs it for real. What it
// leaves is what QEMU translated, and the guest memory it touched, freed
// when it ends but kept by the host for the VM (docs/BENCHMARKS.md).
package trial

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// DefaultTimeout bounds a trial start unless Runner.Timeout says otherwise:
// under TCG the Go runtime's start alone takes ≈ 30 ms, and a program that
// runs on (a service that waits, a job that computes) is only translated
// further at the cost of the idle VM's CPU.
const DefaultTimeout = 2 * time.Second

// Env is the whole environment of a trial start: a NATS URL as a deploy
// gives one, naming the trial's own server and a user of its own.
var Env = []string{"NATS_URL=nats://trial:trial@" + NATSAddr}

// Result is how a trial start ended.
type Result struct {
	// Exit is the program's exit status (its code, or the signal that
	// ended it), as the os package words it.
	Exit string
	// Killed is set when Run ended it: its time was up, ctx ended, or
	// (Done) every request of the trial's server had its reply.
	Killed, Done bool
	Took         time.Duration
	// Requests and Replies count the requests the trial's NATS server
	// sent the program and the replies it took.
	Requests, Replies int
}

// ErrUnsupported: the kernel (or the OS) cannot give a program the
// namespaces of a trial start.
var ErrUnsupported = errors.New("trial starts need network and PID namespaces, which this kernel lacks")

// Run gives the program at path, with args, a trial start in a jail made under dir,
// which must be on path's file system (the jail holds a hard link), and
// waits for it to end, killing it once timeout has passed or ctx ends. The
// jail is gone when Run returns. The file's mode becomes 0755.
func Run(ctx context.Context, dir, path string, args []string, timeout time.Duration) (Result, error) {
	if err := isELF(path); err != nil {
		return Result{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Result{}, err
	}
	jail, err := os.MkdirTemp(dir, "jail-")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(jail)
	// Its user must be able to reach its file, and nothing else.
	if err := os.Chmod(jail, 0o711); err != nil {
		return Result{}, err
	}
	name := filepath.Base(path)
	if err := os.Link(path, filepath.Join(jail, name)); err != nil {
		return Result{}, fmt.Errorf("trial start: %w", err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/"+name, args...) // a path in the jail
	cmd.Env = Env
	cmd.Dir = "/"
	t0 := time.Now()
	ln, err := startJailed(cmd, jail)
	if err != nil {
		return Result{}, err
	}
	// Once its requests are answered, the program has run what it runs
	// for a deploy's first request; what it would do next is wait, and an
	// idle Go program under TCG still takes CPU (its runtime's timers)
	// from the VMs that are serving deploys.
	srv := &server{answered: cancel}
	go srv.serve(ln)
	werr := wait(cmd)
	// Its processes are gone (the PID namespace's with its init), so its
	// connections end once the server has read what they sent.
	ln.Close()
	srv.close(time.Second)
	res := Result{Took: time.Since(t0), Killed: ctx.Err() != nil, Done: srv.done.Load(),
		Requests: int(min(srv.requests.Load(), maxRequests)), Replies: int(srv.replies.Load())}
	if cmd.ProcessState == nil {
		return res, werr
	}
	res.Exit = cmd.ProcessState.String()
	return res, nil
}

// ErrNotProgram: the file is not an ELF executable (a data file staged),
// which gets no trial start.
var ErrNotProgram = errors.New("not an ELF executable")

func isELF(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || string(magic) != "\x7fELF" {
		return ErrNotProgram
	}
	return nil
}

// Runner runs one trial start at a time in the background, for a VM's PID 1:
// Start when a file is staged, Stop when it is deleted, End when a deploy
// or a stop comes. The zero Runner is not usable: set Dir and Log.
type Runner struct {
	// Dir is where jails are made, on the staged files' file system.
	Dir string
	Log *slog.Logger
	// Timeout bounds each trial start; 0: DefaultTimeout.
	Timeout time.Duration
	// Ended, if set, is called with each trial start's outcome (tests).
	Ended func(path string, res Result, err error)

	mu    sync.Mutex
	cur   *running
	ended bool // End was called: no trial start after it
	off   bool // the kernel cannot: no trial start at all
}

type running struct {
	path   string
	cancel context.CancelFunc
	done   chan struct{}
}

// Start gives the file at path a trial start with args in the background,
// ending the one under way first. It does nothing after End.
func (r *Runner) Start(path string, args []string) {
	r.stop(func(*running) bool { return true })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended || r.off || r.cur != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	cur := &running{path: path, cancel: cancel, done: make(chan struct{})}
	r.cur = cur
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	go func() {
		defer close(cur.done)
		defer cancel()
		res, err := Run(ctx, r.Dir, path, args, timeout)
		r.mu.Lock()
		if r.cur == cur {
			r.cur = nil
		}
		if errors.Is(err, ErrUnsupported) {
			r.off = true
		}
		r.mu.Unlock()
		r.report(path, res, err, ctx.Err() != nil)
		if r.Ended != nil {
			r.Ended(path, res, err)
		}
	}()
}

// report logs how a trial start ended; cut: Stop or End ended it.
func (r *Runner) report(path string, res Result, err error, cut bool) {
	name := filepath.Base(path)
	took := res.Took.Round(time.Millisecond)
	switch {
	case errors.Is(err, ErrNotProgram):
		r.Log.Debug("no trial start", "file", name, "error", err)
	case errors.Is(err, ErrUnsupported):
		r.Log.Info("no trial starts: the deploy's first run is slower under emulation", "error", err)
	case err != nil:
		r.Log.Warn("trial start failed; the deploy works, but its first run is slower", "file", name, "error", err)
	case cut:
		r.Log.Debug("trial start cut short", "file", name, "took", took)
	case res.Done:
		r.Log.Info("trial start ended once its requests were answered", "file", name, "requests", res.Requests, "took", took)
	case res.Killed:
		r.Log.Info("trial start ended at its time limit", "file", name, "requests", res.Requests, "replies", res.Replies, "took", took)
	default:
		r.Log.Info("trial start ended", "file", name, "exit", res.Exit, "requests", res.Requests, "replies", res.Replies, "took", took)
	}
}

// Stop ends the trial start of path, if one is under way, and waits for it.
func (r *Runner) Stop(path string) {
	r.stop(func(cur *running) bool { return cur.path == path })
}

// End ends any trial start and waits for it; none starts after it. A
// deploy calls it before it starts its workload.
func (r *Runner) End() {
	r.mu.Lock()
	r.ended = true
	r.mu.Unlock()
	r.stop(func(*running) bool { return true })
}

func (r *Runner) stop(match func(*running) bool) {
	r.mu.Lock()
	cur := r.cur
	r.mu.Unlock()
	if cur == nil || !match(cur) {
		return
	}
	cur.cancel()
	<-cur.done
}
