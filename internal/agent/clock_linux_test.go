package agent

import (
	"testing"
	"time"
)

func TestClockOffset(t *testing.T) {
	host := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		now   time.Time
		rtt   time.Duration
		local time.Time
		want  time.Duration
		ok    bool
	}{
		{"no time from the node", time.Time{}, time.Millisecond, host, 0, false},
		// The node took its time in the middle of the round trip: when the
		// reply came, the host's clock read host+10ms.
		{"behind", host, 20 * time.Millisecond, host.Add(-140 * time.Millisecond), 150 * time.Millisecond, true},
		{"ahead", host, 20 * time.Millisecond, host.Add(time.Minute), -time.Minute + 10*time.Millisecond, true},
		{"in step", host, 4 * time.Millisecond, host.Add(2 * time.Millisecond), 0, true},
	} {
		got, ok := clockOffset(tc.now, tc.rtt, tc.local)
		if got != tc.want || ok != tc.ok {
			t.Errorf("%s: %v, %v; want %v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
