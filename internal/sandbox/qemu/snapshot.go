package qemu

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nex-engine/nex/internal/sandbox"
)

// Snapshot-warm clones. One template VM per shape is booted until its guest
// says it is ready on the config channel, then saved: its RAM lives in a file
// (memory-backend-file, share=on) and the migration stream, with the
// x-ignore-shared capability, holds only device state. Each clone maps that
// RAM file privately (share=off, copy-on-write) and loads the device state
// with -incoming defer + migrate-incoming: to the agent's handshake
// ≈ 0.4 s and ≈ 66 MiB PSS here under TCG, against ≈ 3 s and ≈ 240 MiB for
// a cold boot (docs/BENCHMARKS.md). The node uses clones unless
// vm_snapshots is false; a template that cannot be built or restored from
// costs cold boots, never the pool.
//
// The template is saved before its guest has any identity: it wrote the
// ready line and blocks reading its config. Each clone then gets its own
// VMConfig (sandbox id, nkey seed, clock, entropy), so no clone can reuse
// another's credentials, and none shares another's RNG state or clock.

// snapshotLayout names the files of a template and is part of its key:
// change it whenever the command line changes in a way that breaks restores.
const snapshotLayout = "nex-qemu-snapshot-1"

const (
	ramImage  = "ram.img"
	stateFile = "state.mig"
	// genFile holds the template's generation (Driver.generation): what
	// it was made from besides its shape.
	genFile = "generation"
)

// templatePort is the port of a template's NATS upstream. The template guest
// never dials NATS (it has no identity yet), and the host side of its NATS
// port is not part of the migrated state: each clone's is its own node's.
const templatePort = 4222

type template struct {
	dir   string
	ram   string
	state string
	gen   string // Driver.generation when it was made
}

type templateEntry struct {
	mu sync.Mutex
	t  *template
	// failed is when building the template last failed, and why: until
	// templateRetry later, starts boot cold instead of building again.
	failed    time.Time
	failedErr error
}

// templateRetry is how long a failed template build is remembered: every
// attempt costs a cold boot, so a pool does not pay for one per sandbox.
const templateRetry = 5 * time.Minute

// errTemplateFailed marks a template that failed to build a moment ago.
var errTemplateFailed = errors.New("snapshot template failed to build")

// Prepare makes sure the template of shape s exists, booting and saving one
// if needed. Start calls it lazily; a node may call it up front so the first
// deploy does not pay for the template.
func (d *Driver) Prepare(ctx context.Context, s Shape) error {
	if !d.cfg.Snapshot {
		return nil
	}
	_, err := d.template(ctx, d.shapeOf(sandbox.Spec{VCPU: s.VCPU, MemoryMiB: s.MemoryMiB}))
	return err
}

// template returns the shape's template, building it once per driver (and
// once per SnapshotDir: later drivers find the saved files).
func (d *Driver) template(ctx context.Context, s Shape) (*template, error) {
	d.tmu.Lock()
	e := d.templates[s]
	if e == nil {
		e = &templateEntry{}
		d.templates[s] = e
	}
	d.tmu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.t != nil {
		return e.t, nil
	}
	if !e.failed.IsZero() && time.Since(e.failed) < templateRetry {
		return nil, fmt.Errorf("%w %s ago: %w", errTemplateFailed, time.Since(e.failed).Round(time.Second), e.failedErr)
	}
	key, gen, err := d.templateKey(s)
	if err != nil {
		return nil, err
	}
	t := &template{dir: filepath.Join(d.cfg.SnapshotDir, key), gen: gen}
	t.ram, t.state = filepath.Join(t.dir, ramImage), filepath.Join(t.dir, stateFile)
	if !fileExists(t.state) || !fileExists(t.ram) {
		if err := d.buildTemplate(ctx, s, t); err != nil {
			e.failed, e.failedErr = time.Now(), err
			return nil, fmt.Errorf("build snapshot template %s: %w", key, err)
		}
	}
	e.t, e.failed, e.failedErr = t, time.Time{}, nil
	return t, nil
}

var _ sandbox.Describer = (*Driver)(nil)

// Describe implements sandbox.Describer for `nex node info`: whether VMs
// are restored from snapshot templates, and for each VM size whether its
// template is ready, being built, or failed (and its VMs boot cold).
func (d *Driver) Describe() string {
	if !d.cfg.Snapshot {
		return "cold boots (vm_snapshots is off)"
	}
	type shapeEntry struct {
		s Shape
		e *templateEntry
	}
	d.tmu.Lock()
	entries := make([]shapeEntry, 0, len(d.templates))
	for s, e := range d.templates {
		entries = append(entries, shapeEntry{s, e})
	}
	d.tmu.Unlock()
	if len(entries) == 0 {
		return "snapshot clones; the template is made at the first start"
	}
	slices.SortFunc(entries, func(a, b shapeEntry) int {
		return cmp.Or(a.s.VCPU-b.s.VCPU, a.s.MemoryMiB-b.s.MemoryMiB)
	})
	parts := make([]string, 0, len(entries))
	for _, se := range entries {
		s, e := se.s, se.e
		size := fmt.Sprintf("%d vCPU/%d MiB", s.VCPU, s.MemoryMiB)
		// A build holds the entry for seconds; node info must not wait.
		if !e.mu.TryLock() {
			parts = append(parts, size+": template being built")
			continue
		}
		switch {
		case e.t != nil:
			parts = append(parts, fmt.Sprintf("%s: snapshot clones of template %s", size, filepath.Base(e.t.dir)))
		case !e.failed.IsZero():
			parts = append(parts, fmt.Sprintf("%s: cold boots, the template failed %s ago (retried after %s): %v",
				size, time.Since(e.failed).Round(time.Second), templateRetry, e.failedErr))
		default:
			parts = append(parts, size+": no template yet")
		}
		e.mu.Unlock()
	}
	return strings.Join(parts, "; ")
}

// forgetTemplate drops a template whose clone failed to restore, files and
// all, so the next start builds it again. Clones running from it keep their
// mapping of its RAM file.
func (d *Driver) forgetTemplate(s Shape, t *template, why error) {
	d.tmu.Lock()
	e := d.templates[s]
	d.tmu.Unlock()
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.t != t {
		return
	}
	e.t = nil
	d.log.Warn("Snapshot template dropped: a clone failed to restore from it; the next start builds it again",
		"dir", t.dir, "error", why)
	_ = os.RemoveAll(t.dir)
}

// buildTemplate boots the template in a temporary directory and renames it
// into place once saved, so a crash never leaves a half-written template
// where clones would find it.
func (d *Driver) buildTemplate(ctx context.Context, s Shape, t *template) error {
	if err := os.MkdirAll(d.cfg.SnapshotDir, 0o700); err != nil {
		return err
	}
	removeStaleBuilds(t.dir + ".tmp-*")
	tmp, err := os.MkdirTemp(d.cfg.SnapshotDir, filepath.Base(t.dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	t0 := time.Now()
	v := d.newVM("template-"+filepath.Base(t.dir)[:8], tmp, s)
	v.upstream = net.JoinHostPort("127.0.0.1", strconv.Itoa(templatePort))
	v.mach.RAM = &ramFile{Path: filepath.Join(tmp, ramImage), Shared: true}
	if err := templateBoot().Run(ctx, v, v.log); err != nil {
		v.abort()
		return err
	}
	// Each clone has a stage disk of its own; the template's, never
	// written, need not be kept.
	if err := os.Remove(v.path(stageDisk)); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, genFile), []byte(t.gen+"\n"), 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, t.dir); err != nil {
		if fileExists(t.state) { // another node sharing the dir won the race
			return nil
		}
		return err
	}
	d.log.Info("Snapshot template saved", "dir", t.dir, logTook, time.Since(t0))
	removeOtherGenerations(d.cfg.SnapshotDir, t.gen, d.log)
	return nil
}

// staleBuildAge is when a template build directory is surely abandoned (its
// node crashed): a build takes seconds.
const staleBuildAge = 10 * time.Minute

// removeStaleBuilds deletes abandoned build directories of a template.
func removeStaleBuilds(pattern string) {
	dirs, _ := filepath.Glob(pattern)
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err == nil && time.Since(st.ModTime()) > staleBuildAge {
			os.RemoveAll(dir)
		}
	}
}

// generation names what this driver's templates are made from apart from
// their shape: the guest image's contents (which hold this nex), the QEMU
// binary and the accelerator. Templates of another generation are of no
// use to it.
func (d *Driver) generation() (string, error) {
	inputs, err := d.inputs()
	if err != nil {
		return "", err
	}
	bin, err := d.binary()
	if err != nil {
		return "", err
	}
	st, err := os.Stat(bin)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintln(h, snapshotLayout, inputs, bin, st.Size(), st.ModTime().UnixNano(), d.accel.Accel, d.tsc)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// templateKey names a template by everything its saved state depends on:
// its generation (returned too), the shape and the command line.
func (d *Driver) templateKey(s Shape) (key, gen string, err error) {
	if gen, err = d.generation(); err != nil {
		return "", "", err
	}
	// The command line's machine-wide options (CPU model, kernel command
	// line, devices) are in the key too: a clone must run on the machine its
	// template was saved on. Paths and the node's port are not.
	m := d.machine("", s)
	m.Kernel, m.Initrd, m.RAM = "", "", &ramFile{Path: ramImage}
	machineArgs := m.args()
	h := sha256.New()
	fmt.Fprintln(h, gen, s.VCPU, s.MemoryMiB, strings.Join(machineArgs, "\x00"))
	return hex.EncodeToString(h.Sum(nil))[:16], gen, nil
}

// removeOtherGenerations deletes the templates of other generations (an
// older nex, kernel or QEMU): each is a RAM-sized file that nothing will
// restore again. Clones still running from one keep their mapping of it.
func removeOtherGenerations(dir, gen string, log *slog.Logger) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || strings.Contains(e.Name(), ".tmp-") { // builds: removeStaleBuilds
			continue
		}
		p := filepath.Join(dir, e.Name())
		if b, err := os.ReadFile(filepath.Join(p, genFile)); err == nil && strings.TrimSpace(string(b)) == gen {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			log.Warn("Removing an old snapshot template failed", "dir", p, "error", err)
			continue
		}
		log.Info("Removed a snapshot template of an older nex, kernel or QEMU", "dir", p)
	}
}

// hashInputs hashes the kernel and initrd contents (once per driver: tens of
// MB, ≈ 0.1 s).
func (d *Driver) hashInputs() (string, error) {
	h := sha256.New()
	for _, p := range []string{d.cfg.Kernel, d.cfg.Initrd} {
		f, err := os.Open(p)
		if err != nil {
			return "", fmt.Errorf("hash guest image: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("hash guest image %s: %w", p, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// The snapshot steps.

func buildTemplateArgs(ctx context.Context, v *vm) error {
	v.args = v.mach.args()
	return nil
}

// buildCloneArgs is the cold command line with RAM mapped privately from the
// template's file and QEMU told to wait for the incoming state, which it
// will read from the template's state file, open here (stateFD).
func buildCloneArgs(ctx context.Context, v *vm) error {
	f, err := os.Open(v.clone.state)
	if err != nil {
		return fmt.Errorf("%w: %w", errRestore, err)
	}
	v.state = f
	v.mach.RAM = &ramFile{Path: v.clone.ram, Shared: false}
	v.mach.Incoming = true
	v.args = v.mach.args()
	return nil
}

// errRestore marks a clone whose QEMU ended while it loaded the template:
// the template's files are unusable (a different QEMU, a truncated file).
var errRestore = errors.New("restore from the snapshot template failed")

// restoreSnapshot loads the template's device state into the waiting clone.
// x-ignore-shared must be on at both ends: RAM is not in the stream.
func restoreSnapshot(ctx context.Context, v *vm) error {
	err := loadTemplate(ctx, v)
	if err != nil && ctx.Err() == nil && v.exitedSoon() {
		return fmt.Errorf("%w: %w", errRestore, err)
	}
	return err
}

func loadTemplate(ctx context.Context, v *vm) error {
	q, err := dialQMP(ctx, v.path(qmpSock))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.setCapability(ctx, "x-ignore-shared", true); err != nil {
		return err
	}
	uri := "fd:" + strconv.Itoa(stateFD)
	if err := q.exec(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil); err != nil {
		return err
	}
	// The guest resumes by itself when the stream is loaded (no -S), and
	// QEMU says so; a failed load makes QEMU exit, which ends the wait.
	return q.waitEvent(ctx, "RESUME")
}

// saveSnapshot migrates the running template to a file. The guest is not
// stopped first: a clone of a stopped guest comes up paused.
func saveSnapshot(ctx context.Context, v *vm) error {
	q, err := dialQMP(ctx, v.path(qmpSock))
	if err != nil {
		return err
	}
	defer q.Close()
	if err := q.setCapability(ctx, "x-ignore-shared", true); err != nil {
		return err
	}
	// The state goes to a file the driver opened and passed to QEMU, as a
	// clone's restore reads it from an inherited one: no shell, no cat.
	f, err := os.OpenFile(v.path(stateFile), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = q.passFD(ctx, "state", f)
	f.Close()
	if err != nil {
		return err
	}
	if err := q.exec(ctx, "migrate", map[string]string{"uri": "fd:state"}, nil); err != nil {
		return err
	}
	return poll(ctx, v, func() (bool, error) {
		m, err := q.migration(ctx)
		if err != nil {
			return false, err
		}
		switch m.Status {
		case "completed":
			return true, nil
		case "failed", "cancelled":
			return false, fmt.Errorf("migration %s: %s", m.Status, m.ErrorDesc)
		}
		return false, nil
	})
}

// quit ends the saved template's QEMU and waits for it: its RAM file must not
// change once clones map it.
func quit(ctx context.Context, v *vm) error {
	q, err := dialQMP(ctx, v.path(qmpSock))
	if err != nil {
		return err
	}
	_ = q.exec(ctx, "quit", nil, nil)
	q.Close()
	select {
	case <-v.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// poll calls cond every few milliseconds until it is true, fails, the VM
// exits or ctx ends.
func poll(ctx context.Context, v *vm, cond func() (bool, error)) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := cond()
		if err != nil || ok {
			return err
		}
		select {
		case <-t.C:
		case <-v.Done():
			return fmt.Errorf("qemu exited (%v)", v.Err())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
