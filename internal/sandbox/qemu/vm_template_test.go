package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// A template that cannot be built costs each sandbox a cold boot, not the
// pool its sandboxes; the failure is remembered, so the next start does not
// pay for another attempt.
func TestTemplateBuildFailureBootsCold(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	blocker := filepath.Join(t.TempDir(), "a-file")
	if err := os.WriteFile(blocker, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	d := a.driver(t, func(c *Config) { c.Snapshot, c.SnapshotDir = true, filepath.Join(blocker, "snapshots") })
	ctx, cancel := context.WithTimeout(context.Background(), 2*vmTimeout)
	defer cancel()
	h := sandboxtest.NewHarness(t)
	for i, name := range []string{"cold1", "cold2"} {
		sb := startReady(t, ctx, d, h.AddAgent(name))
		if v := sb.(*vm); v.clone != nil {
			t.Fatalf("start %d restored a clone from an unbuildable template", i+1)
		}
	}
	_, err := d.template(ctx, d.shapeOf(sandbox.Spec{}))
	if !errors.Is(err, errTemplateFailed) {
		t.Fatalf("the build failure was not remembered: %v", err)
	}
}

// A template a clone cannot restore from (here: its device state cut short)
// is dropped, and the next start builds a good one and restores from it.
func TestBrokenTemplateIsRebuilt(t *testing.T) {
	requireVM(t)
	a := vmSetup(t)
	d := a.driver(t, func(c *Config) { c.Snapshot, c.SnapshotDir = true, t.TempDir() })
	ctx, cancel := context.WithTimeout(context.Background(), 3*vmTimeout)
	defer cancel()
	shape := d.shapeOf(sandbox.Spec{})
	tpl, err := d.template(ctx, shape)
	if err != nil {
		t.Fatal(err)
	}
	if gen, _ := d.generation(); !fileHas(filepath.Join(tpl.dir, genFile), gen) {
		t.Fatalf("template %s lacks its generation %s", tpl.dir, gen)
	}
	if err := os.WriteFile(tpl.state, []byte("QEVM"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := sandboxtest.NewHarness(t)
	broken := h.AddAgent("broken")
	if sb, err := d.Start(ctx, broken.Spec(t.TempDir())); err == nil {
		_ = sb.Stop(ctx)
		t.Fatal("a clone restored from a cut-short state file")
	} else if !errors.Is(err, errRestore) {
		t.Fatalf("want a restore error, got %v", err)
	}
	if _, err := os.Stat(tpl.dir); !os.IsNotExist(err) {
		t.Fatalf("the broken template is still there (%v)", err)
	}
	// A template an older nex left behind goes when a new one is saved.
	stale := filepath.Join(filepath.Dir(tpl.dir), "ffffffffffffffff")
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	sb := startReady(t, ctx, d, h.AddAgent("rebuilt"))
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the older template is still there after a new one was saved (%v)", err)
	}
	if v := sb.(*vm); v.clone == nil || v.clone == tpl {
		t.Fatalf("the start after a broken template did not restore from a new one (clone %+v)", v.clone)
	}
}

func fileHas(path, text string) bool {
	b, err := os.ReadFile(path)
	return err == nil && strings.Contains(string(b), text)
}
