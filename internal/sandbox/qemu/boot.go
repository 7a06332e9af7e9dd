package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/nex-engine/nex/internal/sandbox"
)

// Starting a VM is data: an ordered list of named steps run by one loop that
// logs each. A snapshot clone is the cold boot with its command line swapped
// and a restore step added; a template is the cold boot with the config
// channel held instead of served, then saved.
type step struct {
	name string
	run  func(ctx context.Context, v *vm) error
}

type steps []step

// Step names.
const (
	stepPrepareDir    = "prepare dir"
	stepListenConfig  = "listen config socket"
	stepListenFiles   = "listen file socket"
	stepBuildArgs     = "build args"
	stepLaunch        = "launch"
	stepWritePID      = "write pid"
	stepRestore       = "restore snapshot"
	stepServeConfig   = "serve config channel"
	stepAwaitReady    = "await guest ready"
	stepSaveSnapshot  = "save snapshot"
	stepQuit          = "quit"
	stepFindTemplate  = "find template"
	stepRunningLogged = "log machine started"
)

// coldBoot boots the guest from its kernel; the guest says it is ready on the
// config channel and is then given its identity.
func coldBoot() steps {
	return steps{
		{stepPrepareDir, prepareDir},
		{stepListenConfig, listenConfig},
		{stepListenFiles, listenFiles},
		{stepBuildArgs, buildArgs},
		{stepLaunch, launch},
		{stepWritePID, writePID},
		{stepRunningLogged, logStarted},
		{stepServeConfig, serveConfig(true)},
	}
}

// cloneBoot restores a clone of the shape's template. The template's guest
// wrote its ready line before it was saved and is blocked reading the config
// channel, so a clone never writes it again: the host writes the clone's
// config without waiting for it.
func cloneBoot() steps {
	return coldBoot().
		insertBefore(stepPrepareDir, step{stepFindTemplate, findTemplate}).
		replace(stepBuildArgs, step{stepBuildArgs, buildCloneArgs}).
		insertBefore(stepRunningLogged, step{stepRestore, restoreSnapshot}).
		replace(stepServeConfig, step{stepServeConfig, serveConfig(false)})
}

// templateBoot boots a template: RAM in a shared file, the ready line awaited
// but answered by nobody, then the running guest saved and QEMU quit.
func templateBoot() steps {
	return coldBoot().
		replace(stepBuildArgs, step{stepBuildArgs, buildTemplateArgs}).
		replace(stepServeConfig, step{stepAwaitReady, awaitReady}).
		append(step{stepSaveSnapshot, saveSnapshot}, step{stepQuit, quit})
}

func (s steps) index(name string) int {
	for i, st := range s {
		if st.name == name {
			return i
		}
	}
	panic("qemu: no boot step " + name)
}

func (s steps) replace(name string, with step) steps {
	out := append(steps(nil), s...)
	out[s.index(name)] = with
	return out
}

func (s steps) insertBefore(name string, add step) steps {
	i := s.index(name)
	out := append(steps(nil), s[:i]...)
	out = append(out, add)
	return append(out, s[i:]...)
}

func (s steps) append(add ...step) steps { return append(append(steps(nil), s...), add...) }

// run runs the steps in order, logging each; the first error ends the boot.
func (v *vm) run(ctx context.Context, s steps) error {
	for _, st := range s {
		t0 := time.Now()
		if err := st.run(ctx, v); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		v.log.Debug("Boot step done", logStep, st.name, logTook, time.Since(t0))
	}
	return nil
}

// The steps.

func prepareDir(ctx context.Context, v *vm) error {
	st, err := os.Stat(v.dir)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", v.dir)
	}
	return v.removeStale()
}

// listenConfig listens before QEMU starts: QEMU dials the socket
// (server=off) while it initializes and exits if nobody listens.
func listenConfig(ctx context.Context, v *vm) error {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: v.path(agentSock), Net: "unix"})
	if err != nil {
		return err
	}
	v.ln = ln
	return nil
}

// listenFiles listens for the file port's connection, which QEMU dials as
// it does the config socket's. A template listens too but never accepts:
// it is saved before any file is sent.
func listenFiles(ctx context.Context, v *vm) error {
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: v.path(filesSock), Net: "unix"})
	if err != nil {
		return err
	}
	v.files = newFilePort(ln)
	return nil
}

func buildArgs(ctx context.Context, v *vm) error {
	v.args = v.mach.args()
	return nil
}

func launch(ctx context.Context, v *vm) error { return v.launch() }

func writePID(ctx context.Context, v *vm) error { return sandbox.WritePID(v.dir, v.PID()) }

func logStarted(ctx context.Context, v *vm) error {
	v.log.Info("Machine started", logPID, v.PID(), logAccel, v.mach.Accel,
		"snapshot_clone", v.clone != nil, logConsole, v.path(consoleFile))
	return nil
}
