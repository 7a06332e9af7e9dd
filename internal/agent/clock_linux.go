package agent

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
)

// clockSkew is how far the guest clock may be off before the agent sets it.
const clockSkew = time.Second

// resetClockAndEntropy applies the node's clock and entropy, which matters
// in a VM restored from a snapshot: its clock resumes from snapshot time and
// every clone starts with the same RNG state.
func (a *agent) resetClockAndEntropy(r agentapi.HandshakeReply) {
	if !r.Now.IsZero() && absDuration(time.Since(r.Now)) > clockSkew {
		ts := unix.NsecToTimespec(r.Now.UnixNano())
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			a.log.Warn("set clock", keyError, err)
		} else {
			a.log.Info("clock set from node", "now", r.Now)
		}
	}
	if len(r.Entropy) > 0 {
		// Writing to /dev/urandom mixes the bytes into the pool (without
		// crediting entropy), which is all a clone needs to diverge.
		if err := os.WriteFile("/dev/urandom", r.Entropy, 0); err != nil {
			a.log.Warn("mix entropy", keyError, err)
		}
	}
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
