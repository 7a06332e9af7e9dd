// Package process is the sandbox driver without isolation: the agent runs as
// a child process of the node (`nex agent`) in its own process group and
// work dir. Nodes that use it tag themselves nex.unsafe=true.
package process

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nex-engine/nex/internal/pdeath"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Files and directories inside a sandbox's Dir.
const (
	WorkDir = "work"      // the agent's cwd: artifact and workload files
	LogFile = "agent.log" // the agent's stdout and stderr
)

// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL. It
// is longer than the agent's own grace for its workload, so a graceful stop
// is reported by the agent rather than cut short.
const DefaultStopTimeout = 8 * time.Second

// agentPath is the PATH the agent (and through it nothing else: workloads get
// their own environment) starts with.
const agentPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Config configures the driver. The zero value runs this executable.
type Config struct {
	// AgentBinary is the nex executable run as `<AgentBinary> agent`.
	// Empty: os.Executable().
	AgentBinary string
	// StopTimeout: see DefaultStopTimeout (used when zero).
	StopTimeout time.Duration
	Log         *slog.Logger
}

// Driver starts process sandboxes.
type Driver struct {
	cfg Config
}

var (
	_ sandbox.Driver = (*Driver)(nil)
	_ sandbox.Unsafe = (*Driver)(nil)
)

// New returns a driver; it fails only when the agent binary cannot be found.
func New(cfg Config) (*Driver, error) {
	if cfg.AgentBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("process driver: agent binary: %w", err)
		}
		cfg.AgentBinary = exe
	}
	if _, err := os.Stat(cfg.AgentBinary); err != nil {
		return nil, fmt.Errorf("process driver: agent binary: %w", err)
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Driver{cfg: cfg}, nil
}

// Name implements sandbox.Driver.
// refillDelay is how long a pool waits to replace a sandbox a deploy took:
// a process workload needs ≈ 5–10 ms to start and answer, and a new agent
// starting on the same cores at that moment delays it (docs/BENCHMARKS.md).
const refillDelay = 50 * time.Millisecond

// RefillDelay implements sandbox.RefillPacer.
func (d *Driver) RefillDelay() time.Duration { return refillDelay }

var _ sandbox.RefillPacer = (*Driver)(nil)

func (d *Driver) Name() string { return "process" }

// Unsafe implements sandbox.Unsafe: a process sandbox isolates nothing.
func (d *Driver) Unsafe() bool { return true }

// Start implements sandbox.Driver.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Sandbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if spec.ID == "" || spec.Dir == "" {
		return nil, errors.New("process sandbox: spec needs an id and a dir")
	}
	if err := spec.Agent.Validate(); err != nil {
		return nil, fmt.Errorf("process sandbox %s: %w", spec.ID, err)
	}
	work := filepath.Join(spec.Dir, WorkDir)
	if err := os.MkdirAll(work, 0o700); err != nil {
		return nil, fmt.Errorf("process sandbox %s: %w", spec.ID, err)
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, LogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("process sandbox %s: %w", spec.ID, err)
	}
	defer logf.Close() // the child has its own copy

	cmd := &exec.Cmd{
		Path:        d.cfg.AgentBinary,
		Args:        []string{d.cfg.AgentBinary, "agent"},
		Env:         append(spec.Agent.Env(), "PATH="+agentPath, "HOME="+work),
		Dir:         work,
		Stdout:      logf,
		Stderr:      logf,
		SysProcAttr: sysProcAttr(),
	}
	s := &Sandbox{
		id:      spec.ID,
		work:    work,
		logPath: filepath.Join(spec.Dir, LogFile),
		cmd:     cmd,
		timeout: d.cfg.StopTimeout,
		done:    make(chan struct{}),
	}
	if err := s.start(d.cfg.Log); err != nil {
		return nil, fmt.Errorf("process sandbox %s: start agent: %w", spec.ID, err)
	}
	if err := sandbox.WritePID(spec.Dir, s.pid); err != nil {
		_ = s.Stop(context.Background())
		return nil, fmt.Errorf("process sandbox %s: %w", spec.ID, err)
	}
	s.log.Debug("sandbox started", "agent", d.cfg.AgentBinary)
	return s, nil
}

// Sandbox is one running agent process.
type Sandbox struct {
	id      string
	work    string // the agent's work dir
	logPath string // the agent's output
	pid     int
	cmd     *exec.Cmd
	timeout time.Duration
	log     *slog.Logger

	mu        sync.Mutex
	requested bool // Stop was called before the agent ended
	err       error
	done      chan struct{}
}

var (
	_ sandbox.Sandbox       = (*Sandbox)(nil)
	_ sandbox.Stager        = (*Sandbox)(nil)
	_ sandbox.ConsoleTailer = (*Sandbox)(nil)
)

// ConsoleTail implements sandbox.ConsoleTailer with the agent's output.
func (s *Sandbox) ConsoleTail(n int) string { return sandbox.FileTail(s.logPath, n) }

// Stage implements sandbox.Stager with a hard link when the node's store
// and the sandbox share a filesystem, else a copy. Sharing the inode gives
// the workload nothing it lacks: a process sandbox runs as the node's user
// beside the node's files, and Linux refuses writes to a file being
// executed.
func (s *Sandbox) Stage(_ context.Context, src, name string) (string, error) {
	dst := filepath.Join(s.work, ".staged-"+filepath.Base(name))
	if err := os.Link(src, dst); err == nil {
		return dst, nil
	}
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("stage artifact: %w", err)
	}
	defer in.Close()
	// The node forks agents all the time; a child forked while dst is open
	// for writing holds that fd until it execs, and the agent's exec of dst
	// would then fail with "text file busy". Holding ForkLock from open to
	// close keeps every fork out of that window.
	syscall.ForkLock.Lock()
	defer syscall.ForkLock.Unlock()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("stage artifact: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", fmt.Errorf("stage artifact: %w", err)
	}
	if err := out.Close(); err != nil {
		return "", fmt.Errorf("stage artifact: %w", err)
	}
	return dst, nil
}

// Unstage deletes what Stage made for name. The node calls it only on
// sandboxes that take files ahead (sandbox.Prestager), which a process
// sandbox is not; tests that make it one use it.
func (s *Sandbox) Unstage(_ context.Context, name string) error {
	err := os.Remove(filepath.Join(s.work, ".staged-"+filepath.Base(name)))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unstage artifact: %w", err)
	}
	return nil
}

func (s *Sandbox) ID() string            { return s.id }
func (s *Sandbox) PID() int              { return s.pid }
func (s *Sandbox) Done() <-chan struct{} { return s.done }

// Err implements sandbox.Sandbox: sandbox.ErrStopped after a requested
// stop, nil when the agent ended by itself cleanly (its workload was
// undeployed or ended), otherwise how the agent died.
func (s *Sandbox) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// start starts the agent so that its parent-death signal holds (pdeath)
// and waits for it.
func (s *Sandbox) start(log *slog.Logger) error {
	return pdeath.Start(s.cmd, func() {
		s.pid = s.cmd.Process.Pid
		s.log = log.With("sandbox", s.id, "pid", s.pid)
	}, s.wait)
}

func (s *Sandbox) wait(err error) {
	s.mu.Lock()
	switch {
	case s.requested:
		s.err = sandbox.ErrStopped
	case err != nil:
		s.err = fmt.Errorf("process sandbox %s: agent %d: %w", s.id, s.pid, err)
	}
	s.mu.Unlock()
	s.log.Debug("sandbox ended", "error", err)
	close(s.done)
}

// Stop implements sandbox.Sandbox: SIGTERM to the agent's process group (the
// agent then stops its workload), SIGKILL after the stop timeout or when ctx
// ends. It returns once the agent is gone.
func (s *Sandbox) Stop(ctx context.Context) error {
	select {
	case <-s.done:
		return nil
	default:
	}
	s.mu.Lock()
	s.requested = true
	s.mu.Unlock()
	s.signal(syscall.SIGTERM)
	t := time.NewTimer(s.timeout)
	defer t.Stop()
	select {
	case <-s.done:
		return nil
	case <-t.C:
		s.log.Warn("agent ignored SIGTERM; killing it", "after", s.timeout)
	case <-ctx.Done():
	}
	s.signal(syscall.SIGKILL)
	<-s.done
	return nil
}

// signal reaches the agent's whole group: its id is the agent's PID.
func (s *Sandbox) signal(sig syscall.Signal) {
	if err := syscall.Kill(-s.pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		s.log.Warn("signal sandbox", "signal", sig, "error", err)
	}
}
