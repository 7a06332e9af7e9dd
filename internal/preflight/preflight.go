// Package preflight checks what a node needs from its host before it starts:
// the VMM, a usable accelerator, the guest image, room on disk and a
// writable state dir. Each check says what it found and, when it fails, the
// exact fix; `nex node preflight --yes` runs the fixes that can be run
// (installing QEMU with apt-get, building the guest image), and a node
// refuses to start with the same message when a check of its sandbox fails.
//
// The checks are data: an ordered list run by one loop.
package preflight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
)

// Options describe the node the checks are for; OptionsFromConfig fills them
// from its config.
type Options struct {
	// Sandbox is process, qemu or firecracker; auto (or empty) checks qemu,
	// which a node set to auto falls back from.
	Sandbox  string
	DataDir  string
	StateDir string // default <DataDir>/state
	// Kernel and Initrd are the guest image; empty: the image `nex rootfs
	// build` put under <DataDir>/images.
	Kernel, Initrd    string
	QEMUBinary        string
	FirecrackerBinary string
	// Snapshot checks the snapshot dir of snapshot-warm clones too.
	Snapshot bool
	// Agent is the static nex put in the guest image as /init when a fix
	// builds it; default: this executable.
	Agent string
	// MinFreeMiB is the free space the data dir needs (default 2048: a
	// guest image is ≈ 90 MiB, a snapshot template about its RAM size,
	// JetStream the rest).
	MinFreeMiB int64
	Log        *slog.Logger
}

// DefaultMinFreeMiB is the free space the data dir needs by default.
const DefaultMinFreeMiB = 2048

// OptionsFromConfig takes the checks' options from a node's config.
func OptionsFromConfig(c *config.Config) Options {
	return Options{
		Sandbox:           c.Sandbox,
		DataDir:           c.DataDir,
		StateDir:          c.StateDir,
		Kernel:            c.KernelFilepath,
		Initrd:            c.RootfsFilepath,
		QEMUBinary:        c.QEMUBinary,
		FirecrackerBinary: c.FirecrackerBinary,
		Snapshot:          c.Snapshots(),
	}
}

func (o Options) withDefaults() Options {
	if o.Sandbox == "" {
		o.Sandbox = config.SandboxAuto
	}
	if o.DataDir == "" {
		o.DataDir = config.DefaultDataDir()
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join(o.DataDir, "state")
	}
	if o.MinFreeMiB == 0 {
		o.MinFreeMiB = DefaultMinFreeMiB
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	return o
}

// ImageDir is where built guest images live.
func (o Options) ImageDir() string { return filepath.Join(o.withDefaults().DataDir, "images") }

// SnapshotDir is where snapshot templates live.
func (o Options) SnapshotDir() string { return filepath.Join(o.withDefaults().DataDir, "snapshots") }

// Check is one thing the node needs.
type Check struct {
	Name string
	// Run looks at the host and reports; it changes nothing (beyond
	// creating a missing directory).
	Run func(ctx context.Context) sandbox.Check
	// Fix makes the check pass, writing progress to w; nil when only a
	// person can (the report says how).
	Fix func(ctx context.Context, w io.Writer) error
}

// Report is the outcome of every check, in order.
type Report []sandbox.Check

// OK reports whether every check passed.
func (r Report) OK() bool { return r.Err() == nil }

// Err is nil when every check passed, else one error naming each failed
// check, what was found and its fix: what a node says when it refuses to
// start.
func (r Report) Err() error {
	var failed []string
	for _, c := range r {
		if !c.OK {
			failed = append(failed, fmt.Sprintf("%s: %s (fix: %s)", c.Name, c.Info, c.Fix))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &Error{Failed: failed}
}

// Error is a failed preflight.
type Error struct{ Failed []string }

func (e *Error) Error() string {
	return "preflight failed: " + strings.Join(e.Failed, "; ")
}

// ErrFailed matches any *Error with errors.Is.
var ErrFailed = errors.New("preflight failed")

func (e *Error) Is(target error) bool { return target == ErrFailed }

// Print writes one line per check, ✔ or ✘, with the fix under a failed one.
func (r Report) Print(w io.Writer) {
	for _, c := range r {
		mark := "✔"
		switch {
		case !c.OK:
			mark = "✘"
		case c.Warning:
			mark = "!"
		}
		fmt.Fprintf(w, "%s %-16s %s\n", mark, c.Name, c.Info)
		if (!c.OK || c.Warning) && c.Fix != "" {
			fmt.Fprintf(w, "  %-16s fix: %s\n", "", c.Fix)
		}
	}
}

// Warnings are the passed checks with a finding to act on.
func (r Report) Warnings() []sandbox.Check {
	var w []sandbox.Check
	for _, c := range r {
		if c.OK && c.Warning {
			w = append(w, c)
		}
	}
	return w
}

// Fixable reports whether a failed check of r, or one that warns, has a fix
// RunAndFix can run.
func (r Report) Fixable(checks []Check) bool {
	for i, c := range r {
		if (!c.OK || c.Warning) && i < len(checks) && checks[i].Fix != nil {
			return true
		}
	}
	return false
}

// Run runs every check.
func Run(ctx context.Context, checks []Check) Report {
	r := make(Report, 0, len(checks))
	for _, c := range checks {
		r = append(r, c.run(ctx))
	}
	return r
}

// RunAndFix runs every check; a failed one, or one that warns (an image of
// an older nex), that has a Fix is fixed and checked again. Fixes run in
// order, so a later check sees what an earlier fix did (the initramfs check
// passes once the kernel's fix built the image).
func RunAndFix(ctx context.Context, checks []Check, w io.Writer) Report {
	r := make(Report, 0, len(checks))
	for _, c := range checks {
		res := c.run(ctx)
		if (!res.OK || res.Warning) && c.Fix != nil {
			fmt.Fprintf(w, "→ fixing %s\n", c.Name)
			if err := c.Fix(ctx, w); err != nil {
				res.Info = fmt.Sprintf("%s; the fix failed: %v", res.Info, err)
			} else {
				res = c.run(ctx)
			}
		}
		r = append(r, res)
	}
	return r
}

func (c Check) run(ctx context.Context) sandbox.Check {
	res := c.Run(ctx)
	res.Name = c.Name
	return res
}
