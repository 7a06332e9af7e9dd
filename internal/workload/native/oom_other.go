//go:build !linux

package native

import "time"

func sinceBoot() time.Duration { return 0 }

// oomKilled knows the kernel's log on Linux only.
func oomKilled(int, time.Duration) string { return "" }
