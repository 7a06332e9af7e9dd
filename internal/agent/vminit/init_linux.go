package vminit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/reaper"
	"github.com/nex-engine/nex/internal/trial"
	"github.com/nex-engine/nex/internal/vport"
)

// debugEnv, set on the kernel command line (nex_debug=1), turns on debug
// logs.
const debugEnv = "nex_debug"

// Bounds of the waits of init: devices appear within milliseconds of their
// module loading.
const (
	ethWait  = 3 * time.Second
	portWait = 3 * time.Second
	guestEth = "eth0"
	workDir  = "/tmp/work"
)

// paths of the guest; a struct so the same code could run against another
// root.
type paths struct {
	sysfs, dev, proc, modules string
}

var guestPaths = paths{sysfs: "/sys", dev: "/dev", proc: "/proc", modules: "/modules"}

// Wanted reports whether this process is vminit: PID 1 of a VM.
func Wanted() bool { return os.Getpid() == 1 }

// Main runs vminit and never returns: it boots the guest, runs the agent
// and powers off.
func Main() {
	// The kernel hands init the command line's unknown key=value words
	// without a dot as environment variables: nex_debug=1 turns on debug
	// logs. (Dotted words are module parameters and never reach init.)
	level := slog.LevelInfo
	if os.Getenv(debugEnv) != "" {
		level = slog.LevelDebug
	}
	initMain(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}

// vm is PID 1's state while it boots.
type vm struct {
	log *slog.Logger
	p   paths
	cfg agentapi.VMConfig
	// via tells where the config came from, for the log.
	via string
	// workloads is where workloads find NATS (agentapi.WorkloadNATSAddr).
	workloads net.Listener
	// fwd forwards the connections made there to the node's NATS
	// (dialNode).
	fwd *forwarder
	// natsPort is the NATS port's session, opened before the config.
	natsPort *natsPort
	// agentDial is the agent's NATS client's dialer (nodeDialers).
	agentDial nats.CustomDialer
	// rehearsal is the agent's Options.Rehearsal, found before the boot
	// steps: a snapshot clone does not look for it again on its way to
	// its handshake.
	rehearsal []string
	// files is the file port's server (serveFiles); nil without the port.
	files *FileServer
	// trials gives each file staged through the port its trial start;
	// nil without the port.
	trials *trial.Runner
}

// bootSteps is what PID 1 does, in order, before it runs the agent.
//
// Everything that needs no identity comes before the config step, where
// init says it is ready on the config channel: a snapshot template is saved
// right then, so its clones start from there, and go from their identity
// straight to dialing the node.
func (v *vm) bootSteps() []step {
	steps := make([]step, 0, 16)
	for _, m := range mounts {
		steps = append(steps, step{name: "mount " + m.target, run: m.mount})
	}
	return append(steps,
		step{name: "load modules", run: v.loadModules},
		step{name: "loopback up", run: linkUp("lo")},
		step{name: "network " + guestEth, run: v.network},
		step{name: "listen for workloads", run: v.listenWorkloads},
		step{name: "serve file port", run: v.serveFiles, optional: true},
		step{name: "work dir", run: makeWorkDir},
		step{name: "open nats port", run: v.openNATSPort},
		step{name: "warm up", run: v.warmUp, optional: true},
		step{name: "config", run: v.config},
		step{name: "set clock", run: v.setClock, optional: true},
		step{name: "seed entropy", run: v.seedEntropy, optional: true},
		step{name: "node dialers", run: v.dialNode},
	)
}

type mountPoint struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

var mounts = []mountPoint{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

func (m mountPoint) mount(context.Context) error {
	if err := os.MkdirAll(m.target, 0o755); err != nil {
		return err
	}
	err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
	if errors.Is(err, unix.EBUSY) {
		return nil // already mounted
	}
	return err
}

// loadModules loads what the image builder listed, in its order, skipping
// drivers of virtio devices this VM does not have (their lines come after
// the transport's, so the devices are known by then). A module the kernel
// already has (built in, or loaded) reports EEXIST, which is fine.
func (v *vm) loadModules(context.Context) error {
	// The image always has the order file (empty when the kernel has
	// everything built in), so its absence means the kernel could not unpack
	// the whole initramfs.
	b, err := os.ReadFile(filepath.Join(v.p.modules, "order"))
	if err != nil {
		return fmt.Errorf("%w (initramfs incomplete: too little guest RAM to unpack it?)", err)
	}
	lines, err := guestimage.ParseModuleOrder(b)
	if err != nil {
		return err
	}
	var loaded, skipped []string
	for _, l := range lines {
		name := strings.TrimSuffix(l.File, filepath.Ext(l.File))
		if l.Device != 0 && !hasVirtioDevice(v.p.sysfs, l.Device) {
			skipped = append(skipped, name)
			continue
		}
		if err := loadModule(filepath.Join(v.p.modules, l.File)); err != nil {
			return fmt.Errorf("%s: %w", l.File, err)
		}
		loaded = append(loaded, name)
	}
	v.log.Debug("modules", "loaded", loaded, "skipped", skipped)
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		// .ko.xz / .ko.zst / .ko.gz: the kernel decompresses (5.17+).
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

func linkUp(name string) func(context.Context) error {
	return func(context.Context) error { return ifUp(name) }
}

// network gives the guest its fixed address on QEMU's user-mode network,
// which only the Firecracker test server's guests have (it stands in for
// vsock there). A VM without a virtio-net device (the qemu driver's, which
// reach NATS over the NATS port; Firecracker's, over vsock) skips it.
func (v *vm) network(ctx context.Context) error {
	if !hasVirtioDevice(v.p.sysfs, virtioNet) {
		v.log.Debug("no virtio-net device; no network")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ethWait)
	defer cancel()
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		ok, err := ifExists(guestEth)
		if ok {
			break
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not appear: %w", guestEth, ctx.Err())
		case <-t.C:
		}
	}
	if err := ifAddr(guestEth, net.ParseIP(agentapi.GuestIP), agentapi.GuestNetmask); err != nil {
		return err
	}
	return ifUp(guestEth)
}

// config learns the VM's identity: from the host over the config port when
// the VM has virtio-serial, else from the kernel command line.
func (v *vm) config(ctx context.Context) error {
	var portErr error
	if hasVirtioDevice(v.p.sysfs, virtioConsoleID) {
		cfg, err := v.configFromPort(ctx)
		if err == nil {
			v.cfg, v.via = cfg, "config port"
			return nil
		}
		portErr = err
	}
	cfg, err := configFromCmdline(filepath.Join(v.p.proc, "cmdline"))
	if err != nil {
		if portErr != nil {
			return fmt.Errorf("%w; %w", portErr, err)
		}
		return err
	}
	v.cfg, v.via = cfg, "kernel command line"
	return nil
}

// openPort waits (up to portWait) for the virtio-serial port called name
// and opens its device, making the device node if devtmpfs has not.
func (v *vm) openPort(ctx context.Context, name string) (*os.File, error) {
	wctx, cancel := context.WithTimeout(ctx, portWait)
	port, err := waitPort(wctx, v.p.sysfs, name)
	cancel()
	if err != nil {
		return nil, err
	}
	dev, err := portDevice(v.p.sysfs, v.p.dev, port, func(path string, major, minor uint32) error {
		return unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(major, minor)))
	})
	if err != nil {
		return nil, err
	}
	return os.OpenFile(dev, os.O_RDWR, 0)
}

func (v *vm) configFromPort(ctx context.Context) (agentapi.VMConfig, error) {
	f, err := v.openPort(ctx, agentapi.ConfigPortName)
	if err != nil {
		return agentapi.VMConfig{}, err
	}
	// The wait for the answer has no bound of its own: a pool may snapshot
	// the VM right here, having seen the ready line, and restore clones that
	// each get their config (the host sends it as soon as it connects to a
	// restored VM) minutes later. The host kills a VM it gave up on.
	stop := context.AfterFunc(ctx, func() { f.Close() })
	cfg, err := exchangeConfig(readWriter{eofRetry{ctx, f}, f})
	if err != nil {
		stop()
		f.Close()
		return cfg, err
	}
	// The port stays open until init ends, as the host's side does for the
	// VM's life: closing it cost a clone 10–25 ms of emulated kernel work on
	// its way to its handshake.
	return cfg, nil
}

func (v *vm) setClock(context.Context) error {
	if v.cfg.Now.IsZero() {
		return nil
	}
	ts := unix.NsecToTimespec(v.cfg.Now.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

// seedEntropy mixes the host's bytes into the kernel pool and credits them,
// so a fresh (or restored) guest does not start with the same or a starved
// RNG. Writing to /dev/urandom, the fallback, mixes without crediting.
func (v *vm) seedEntropy(context.Context) error {
	e := v.cfg.Entropy
	if len(e) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(v.p.dev, "urandom"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(e))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(8 * len(e))
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(e))
	copy(buf[8:], e)
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		if _, err := f.Write(e); err != nil {
			return fmt.Errorf("RNDADDENTROPY: %w; write: %w", errno, err)
		}
	}
	// Mixing changes the input pool, not what getrandom returns: the
	// kernel's CRNG keeps its key until its next scheduled reseed (up to a
	// minute later), so clones of one template would read the same bytes
	// until then. Reseed it now, before the agent gets its identity.
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// listenWorkloads listens where workloads look for NATS. It needs no
// identity, so it happens before a snapshot: a clone does not pay for it.
func (v *vm) listenWorkloads(context.Context) error {
	ln, err := net.Listen("tcp", agentapi.WorkloadNATSAddr)
	if err != nil {
		return err
	}
	v.workloads = ln
	return nil
}

// openNATSPort starts the guest's session on the NATS port, in the
// background: it needs no identity, so a snapshot template has it open
// (and the code that opens it run) before it is saved, and its clones only
// open streams on it. A VM without the port (Firecracker, or a QEMU guest
// booted by other means) never uses it: its NATS URL names no port.
func (v *vm) openNATSPort(ctx context.Context) error {
	if !hasVirtioDevice(v.p.sysfs, virtioConsoleID) {
		return nil
	}
	p := &natsPort{opened: make(chan struct{})}
	v.natsPort = p
	go func() {
		defer close(p.opened)
		f, err := v.openPort(ctx, agentapi.NATSPortName)
		if err != nil {
			p.err = err
			return
		}
		// A read of the port while no host is connected is EOF, not the
		// end of it (eofRetry).
		port := portConn{readWriter{eofRetry{ctx, f}, f}, f}
		if p.d, p.err = vport.NewDialer(port); p.err != nil {
			port.Close()
		}
	}()
	return nil
}

// natsPort is the session openNATSPort starts: d or err once opened is
// closed.
type natsPort struct {
	opened chan struct{}
	d      *vport.Dialer
	err    error
}

// session waits for the NATS port's session.
func (v *vm) session(ctx context.Context) (*vport.Dialer, error) {
	p := v.natsPort
	if p == nil {
		return nil, errors.New("the VM has no virtio-serial device")
	}
	select {
	case <-p.opened:
		return p.d, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// dialNode sets up the guest's ways to the node's NATS (nodeDialers) and
// starts forwarding the workloads' connections (nothing connects before
// the agent has handshaken, so the connections of a template never come).
func (v *vm) dialNode(ctx context.Context) error {
	agentDial, workloads, err := nodeDialers(v.cfg.Metadata.NATSURL, func() (*vport.Dialer, error) { return v.session(ctx) })
	if err != nil {
		return err
	}
	v.agentDial = agentDial
	v.fwd = newForwarder(ctx, workloads, v.log)
	go func() {
		if err := v.fwd.serve(v.workloads); err != nil {
			v.log.Error("nats forwarder", keyError, err)
		}
	}()
	return nil
}

// warmUp fills, before init says it is ready, the caches that the code run
// once the config arrives builds on first use: the agent's whole way to its
// handshake (agent.WarmUp: nats.go's connect, with an nkey signature, its
// subscriptions and the handshake request, against a peer it plays on a
// pipe) and encoding/json's codecs of the config. They are memory, so a
// snapshot template holds them. A clone must translate again (TCG) all the
// code it runs, and first runs are what cost most under emulation, but it
// need not also rebuild what is already there. Running the agent's
// connection here took a clone's restore → handshake from 0.38–0.44 to
// 0.33–0.37 s (BenchmarkCloneRestore, run alternately with the earlier
// warm-up of the nkey and JSON alone).
//
// Whatever is derived from randomness before the config is shared by every
// clone of a snapshot template, so nothing secret or identifying is:
//   - crypto/rand reads getrandom on every call, and init reseeds the
//     kernel's CRNG with the host's entropy before the agent runs;
//   - nats.go's inbox subjects start with the sandbox's own prefix
//     (agentapi.InboxPrefix), so they differ between clones even though
//     the nuid suffix comes from a generator seeded at package init, and
//     its request tokens are seeded from the clock, set from the host
//     before the agent runs;
//   - the Go runtime's hash seeds and math/rand state carry no secrets.
func (v *vm) warmUp(ctx context.Context) error {
	if err := agent.WarmUp(ctx); err != nil {
		return err
	}
	b, err := json.Marshal(agentapi.VMConfig{
		Metadata: agentapi.Metadata{SandboxID: "warm-up", NATSURL: "nats://" + agentapi.GuestNATSAddr, Seed: "SU"},
		Now:      time.Now(),
		Entropy:  make([]byte, 64),
	})
	if err != nil {
		return err
	}
	var cfg agentapi.VMConfig
	return json.Unmarshal(b, &cfg)
}

func initMain(base *slog.Logger) {
	log := base.With("role", "init")
	defer func() {
		if r := recover(); r != nil {
			log.Error("init panicked", "panic", r)
			powerOff(log)
		}
	}()
	start := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigchld := make(chan os.Signal, 1)
	signal.Notify(sigchld, syscall.SIGCHLD)
	go reapOrphans(ctx, sigchld, log)
	v := &vm{log: log, p: guestPaths, rehearsal: rehearsal()}
	if err := runSteps(ctx, log, v.bootSteps()); err != nil {
		log.Error("boot failed; powering off", keyError, err)
		powerOff(log)
	}
	// Kernel time before init and init's own time, for boot tuning. The
	// line waits for the handshake (or the agent's end, if it never comes):
	// on a clone's way there, the first run of its code (slog's, the
	// uptime's parse) took 30–60 ms.
	booted := time.Now()
	took := booted.Sub(start)
	var once sync.Once
	logBooted := func() {
		once.Do(func() {
			kernel := uptime(v.p.proc) - time.Since(booted) - took
			log.Info("booted", "sandbox", v.cfg.Metadata.SandboxID, "via", v.via,
				"kernel", kernel.Round(time.Millisecond), "init", took.Round(time.Millisecond))
		})
	}

	// A SIGTERM to init (nothing sends one today; a shutdown inside the
	// guest would) stops the agent gracefully; init powers off once it has.
	actx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	err := v.runAgent(actx, base.With("role", "agent"), logBooted)
	stop()
	logBooted()
	if err != nil {
		log.Error("agent", keyError, err)
	}
	log.Info("agent ended; powering off")
	cancel()
	powerOff(log)
}

// reapOrphans reaps, until ctx ends, every child that reaches PID 1 but
// the workloads the agent started (package reaper leaves those to the
// agent's own wait). Each SIGCHLD drains all ended children (signals
// coalesce); while one of the agent's children waits for its wait, the
// ones behind it are looked at again shortly.
func reapOrphans(ctx context.Context, sigchld <-chan os.Signal, log *slog.Logger) {
	reaped := func(pid int, ws unix.WaitStatus) {
		log.Debug("reaped orphan", "pid", pid, "status", exitStatus(ws))
	}
	for {
		var again <-chan time.Time
		if reaper.Reap(reaped) {
			again = time.After(reapAgain)
		}
		select {
		case <-sigchld:
		case <-again:
		case <-ctx.Done():
			return
		}
	}
}

// reapAgain is how soon reapOrphans looks again past a child of the
// agent's that has ended, which its wait (already under way) reaps.
const reapAgain = 10 * time.Millisecond

func exitStatus(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return fmt.Sprintf("exit %d", ws.ExitStatus())
}

// powerOff ends the VM. It skips the kernel's orderly shutdown: an
// emergency restart (sysrq b) resets the machine at once, without
// device_shutdown, which has nothing to save here (the agent has flushed
// what it sends to the node, the guest's files are on tmpfs) and which can
// hang: Linux 6.1's virtio-net, once device_shutdown has marked its queues
// broken, may spin forever reclaiming sent buffers (fixed upstream by
// 0d0eff39ceb3, not in Debian 12's kernel), leaving the VMM running. The
// restart ends the VM: QEMU runs with -no-reboot, and Firecracker exits on
// the i8042 reset of reboot=k.
//
// A kernel without sysrq falls back to the orderly way: power off when the
// kernel runs on ACPI, otherwise restart (without ACPI reboot(POWER_OFF)
// only halts). Should that fail too, PID 1 exits, the kernel panics and
// panic=-1 reboots, which again ends the VMM.
func powerOff(log *slog.Logger) {
	unix.Sync()
	drainConsole(os.Stderr, time.Second)
	err := emergencyRestart(guestPaths.proc)
	log.Error("emergency restart", keyError, err)
	if canPowerOff(guestPaths.sysfs) {
		err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
		log.Error("power off", keyError, err)
	}
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	log.Error("restart", keyError, err)
	os.Exit(1)
}

// drainConsole waits, at most within, until the console has sent what PID 1
// wrote to it: its last log lines (why a boot failed, say) sit in the
// serial driver's buffer until the UART takes them, and a reset would cut
// them off. tcdrain(3) is TCSBRK with a non-zero argument.
func drainConsole(console *os.File, within time.Duration) {
	done := make(chan struct{})
	go func() {
		_ = unix.IoctlSetInt(int(console.Fd()), unix.TCSBRK, 1)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(within):
	}
}

// emergencyRestart asks the kernel for sysrq b, which restarts the machine
// inside the write and so returns only when it could not.
func emergencyRestart(proc string) error {
	f, err := os.OpenFile(filepath.Join(proc, "sysrq-trigger"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte("b")); err != nil {
		return err
	}
	return errors.New("still running after sysrq b")
}

// canPowerOff reports whether the kernel runs on ACPI, without which
// reboot(POWER_OFF) halts the CPU and never returns.
func canPowerOff(sysfs string) bool {
	_, err := os.Stat(filepath.Join(sysfs, "firmware", "acpi"))
	return err == nil
}

// uptime is the time since the kernel started (monotonic, unaffected by the
// clock step above).
func uptime(proc string) time.Duration {
	b, err := os.ReadFile(filepath.Join(proc, "uptime"))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	d, _ := time.ParseDuration(f[0] + "s")
	return d
}

// runAgent runs the agent with the metadata init got, until it is done.
func (v *vm) runAgent(ctx context.Context, log *slog.Logger, handshaken func()) error {
	return agent.Run(ctx, agent.Options{
		Handshaken:       handshaken,
		Meta:             v.cfg.Metadata,
		Log:              log,
		PID1:             true,
		WorkloadNATSAddr: agentapi.WorkloadNATSAddr,
		WorkDir:          workDir,
		StagedDir:        agentapi.StagedDir,
		Dialer:           v.agentDial,
		Rehearsal:        v.rehearsal,
		RehearseMore:     v.rehearseMore(),
		Quiesce:          v.quiesce,
		Deploying:        v.deploying,
		CheckRoom:        func(size int64) error { return checkRoom(workDir, size, nil) },
	})
}

// rehearseMore is the agent's Options.RehearseMore: PID 1's parts of a
// deploy. The forwarder's (a connection dialled ahead, as for a deploy,
// which rehearseForward's takes), then the file port's
// (FileServer.Rehearse, which does nothing without a disk).
func (v *vm) rehearseMore() func(context.Context) error {
	return func(ctx context.Context) error {
		v.deploying()
		if err := rehearseForward(ctx, v.workloads.Addr().String()); err != nil {
			return fmt.Errorf("nats forwarder: %w", err)
		}
		if v.files == nil {
			return nil
		}
		return v.files.Rehearse(ctx)
	}
}

// quiesce is the agent's Options.Quiesce: a deploy or a stop ends the
// trial start under way.
func (v *vm) quiesce() {
	if v.trials != nil {
		v.trials.End()
	}
}

// deploying is the agent's Options.Deploying: the forwarder dials the
// node's NATS for the workload's first connection while it starts.
func (v *vm) deploying() {
	if v.fwd != nil {
		v.fwd.prepare()
	}
}

// rehearsal is the program the agent rehearses a deploy with: the image's
// guestimage.RehearsalFile, absent from images for other machines.
func rehearsal() []string {
	p := "/" + guestimage.RehearsalFile
	if _, err := os.Stat(p); err != nil {
		return nil
	}
	return []string{p}
}

func makeWorkDir(context.Context) error { return os.MkdirAll(workDir, 0o755) }
