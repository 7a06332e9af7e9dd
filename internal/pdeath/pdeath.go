// Package pdeath starts child processes whose parent-death signal holds for
// their whole life. Linux sends a child its Pdeathsig when the *thread* that
// forked it exits, not the process, and Go ends a thread whose goroutine
// exits while locked to it (as network-namespace code does). A child forked
// from a goroutine locked to its thread, which then waits for the child
// there, is never orphaned by such a thread exit.
package pdeath

import (
	"os/exec"
	"runtime"

	"github.com/nex-engine/nex/internal/reaper"
)

// Start starts cmd (whose SysProcAttr the caller set, Pdeathsig included)
// from a goroutine locked to its OS thread. started, if not nil, runs on
// that thread once the child runs, before Start returns; exited runs there
// with cmd.Wait's error when the child has ended. The child is started
// through package reaper, so a PID 1 that reaps orphans leaves it to that
// Wait.
func Start(cmd *exec.Cmd, started func(), exited func(error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := reaper.Start(cmd); err != nil {
			errc <- err
			return
		}
		if started != nil {
			started()
		}
		errc <- nil
		if runtime.GOMAXPROCS(0) == 1 {
			awaitExit(cmd.Process.Pid)
		}
		err := cmd.Wait()
		reaper.Release(cmd.Process.Pid)
		exited(err)
	}()
	return <-errc
}
