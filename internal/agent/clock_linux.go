package agent

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
)

// clockSkew is how far the guest clock may be off before the agent sets
// it. The config port gave a VM the host's time at boot or at its clone's
// restore, which it read 0.1–0.4 s later (measured under TCG); the
// handshake's round trip is shorter, and bounds the error.
const clockSkew = 5 * time.Millisecond

// resetClockAndEntropy applies the node's clock and entropy, which matters
// in a VM restored from a snapshot: its clock resumes from snapshot time and
// every clone starts with the same RNG state. The handshake was sent at
// sent and its reply came at recv (local clock); the node took r.Now in
// between.
func (a *agent) resetClockAndEntropy(r agentapi.HandshakeReply, sent, recv time.Time) {
	rtt := recv.Sub(sent)
	if off, ok := clockOffset(r.Now, rtt, recv); ok && absDuration(off) > clockSkew {
		ts := unix.NsecToTimespec(time.Now().Add(off).UnixNano())
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			a.log.Warn("set clock", keyError, err)
		} else {
			a.log.Info("clock set from node", "offset", off, "rtt", rtt)
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

// clockOffset is how far to move the local clock, read as local when the
// node's reply came, to the node's: the node took hostNow somewhere in the
// round trip of rtt, so the best guess is its middle. ok is false without
// a time from the node.
func clockOffset(hostNow time.Time, rtt time.Duration, local time.Time) (time.Duration, bool) {
	if hostNow.IsZero() {
		return 0, false
	}
	return hostNow.Add(rtt / 2).Sub(local), true
}
