// Package reaper lets one process both reap the orphans the kernel hands it
// (as a VM's PID 1, or a sub-reaper) and wait with os/exec for the children
// it started itself.
//
// Reaping with wait4(-1) would take the exit status of whichever child
// ended, its own included, and exec.Cmd.Wait would then fail with ECHILD.
// So children are started through Start, which records them, and Reap
// looks at each ended child (waitid with WNOWAIT, which leaves it a
// zombie) before it reaps it: a recorded child is left to its Wait.
package reaper

import (
	"os/exec"
	"sync"
)

var (
	// mu is held across Start's fork and Reap's look-and-reap, so a child
	// that ends at once is recorded before Reap can see it.
	mu    sync.Mutex
	owned = map[int]struct{}{}
)

// Start starts cmd and records it as waited for by its caller, who must
// call Release with its pid once cmd.Wait has returned.
func Start(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	owned[cmd.Process.Pid] = struct{}{}
	return nil
}

// Release forgets a child Start recorded, once it has been waited for.
func Release(pid int) {
	mu.Lock()
	delete(owned, pid)
	mu.Unlock()
}
