package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/vmm"
	"github.com/nex-engine/nex/internal/vport"
)

// Starting a VM is data: an ordered list of named steps run by one loop that
// logs each. A snapshot clone is the cold boot with its command line swapped
// and a restore step added; a template is the cold boot with the config
// channel held instead of served, then saved.
type (
	step  = vmm.Step[*vm]
	steps = vmm.Steps[*vm]
)

// Step names.
const (
	stepPrepareDir    = "prepare dir"
	stepListenConfig  = "listen config socket"
	stepStageDisk     = "create stage disk"
	stepListenFiles   = "listen file socket"
	stepListenNATS    = "listen nats port socket"
	stepListenQMP     = "listen qmp socket"
	stepBuildArgs     = "build args"
	stepLaunch        = "launch"
	stepWritePID      = "write pid"
	stepRestore       = "restore snapshot"
	stepServeConfig   = "serve config channel"
	stepAwaitReady    = "await guest ready"
	stepSaveSnapshot  = "save snapshot"
	stepQuit          = "quit"
	stepRunningLogged = "log machine started"
)

// coldBoot boots the guest from its kernel; the guest says it is ready on the
// config channel and is then given its identity.
func coldBoot() steps {
	return steps{
		{Name: stepPrepareDir, Run: prepareDir},
		{Name: stepListenConfig, Run: listenConfig},
		{Name: stepStageDisk, Run: createStageDisk},
		{Name: stepListenFiles, Run: listenFiles},
		{Name: stepListenNATS, Run: listenNATSPort},
		{Name: stepListenQMP, Run: listenQMP},
		{Name: stepBuildArgs, Run: buildArgs},
		{Name: stepLaunch, Run: launch},
		{Name: stepWritePID, Run: writePID},
		{Name: stepRunningLogged, Run: logStarted},
		{Name: stepServeConfig, Run: serveConfig(true)},
	}
}

// cloneBoot restores a clone of the shape's template. The template's guest
// wrote its ready line before it was saved and is blocked reading the config
// channel, so a clone never writes it again: the host writes the clone's
// config without waiting for it.
func cloneBoot() steps {
	return coldBoot().
		Replace(stepBuildArgs, step{Name: stepBuildArgs, Run: buildCloneArgs}).
		InsertBefore(stepRunningLogged, step{Name: stepRestore, Run: restoreSnapshot}).
		Replace(stepServeConfig, step{Name: stepServeConfig, Run: serveConfig(false)})
}

// templateBoot boots a template: RAM in a shared file, the ready line awaited
// but answered by nobody, then the running guest saved and QEMU quit.
func templateBoot() steps {
	return coldBoot().
		Replace(stepBuildArgs, step{Name: stepBuildArgs, Run: buildTemplateArgs}).
		Replace(stepServeConfig, step{Name: stepAwaitReady, Run: awaitReady}).
		Append(step{Name: stepSaveSnapshot, Run: saveSnapshot}, step{Name: stepQuit, Run: quit})
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
	ln, err := v.listenUnix(agentSock)
	if err != nil {
		return err
	}
	v.ln = ln
	return nil
}

// listenNATSPort serves the NATS port: QEMU dials nats.sock as it starts,
// and every stream the guest opens on that connection (the agent's own
// connections and, through PID 1's forwarder, its workloads') is spliced
// to the node's NATS.
func listenNATSPort(ctx context.Context, v *vm) error {
	ln, err := v.listenUnix(natsSock)
	if err != nil {
		return err
	}
	v.nats = ln
	dial := func(ctx context.Context) (net.Conn, error) {
		v.portConns.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", v.upstream)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				if err := vport.Serve(context.Background(), c, dial, v.log); err != nil {
					v.log.Warn("NATS port", "error", err)
				}
			}()
		}
	}()
	return nil
}

// createStageDisk makes the stage disk's backing file: sparse, so it takes
// no space until a file is written into it, and as large as the largest
// file the port takes. A template has one too (a clone must have the
// devices its template had), which no file is ever written into.
func createStageDisk(ctx context.Context, v *vm) error {
	f, err := os.OpenFile(v.path(stageDisk), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = f.Truncate(agentapi.MaxStagedSize)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// listenFiles listens for the file port's connection, which QEMU dials as
// it does the config socket's. A template listens too but never accepts:
// it is saved before any file is sent.
func listenFiles(ctx context.Context, v *vm) error {
	ln, err := v.listenUnix(filesSock)
	if err != nil {
		return err
	}
	v.files = newFilePort(ln, v.path(stageDisk), v.log)
	return nil
}

func listenQMP(ctx context.Context, v *vm) error { return v.listenQMP() }

func buildArgs(ctx context.Context, v *vm) error {
	v.args = v.mach.args()
	return nil
}

func launch(ctx context.Context, v *vm) error { return v.launch() }

func writePID(ctx context.Context, v *vm) error { return sandbox.WritePID(v.dir, v.PID()) }

// logStarted logs a template's VM, which the node never sees; the node logs
// every other VM once, with LogAttrs.
func logStarted(ctx context.Context, v *vm) error {
	level := slog.LevelDebug
	if v.guestMeta == nil {
		level = slog.LevelInfo
	}
	v.log.Log(ctx, level, "Machine started", append([]any{logPID, v.PID()}, v.LogAttrs()...)...)
	return nil
}

// LogAttrs implements sandbox.Attrs.
func (v *vm) LogAttrs() []any {
	return []any{logAccel, v.mach.Accel, "snapshot_clone", v.clone != nil, logConsole, v.path(consoleFile)}
}
