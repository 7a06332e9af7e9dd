//go:build !linux

package agent

import (
	"time"

	"github.com/nex-engine/nex/internal/agentapi"
)

// resetClockAndEntropy is Linux-only: agents run as PID 1 only in Linux VMs.
func (a *agent) resetClockAndEntropy(agentapi.HandshakeReply, time.Time, time.Time) {}
