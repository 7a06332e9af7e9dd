package native

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A workload the kernel's OOM killer ended dies of SIGKILL like one killed
// by hand; only the kernel's log tells the two apart. Its record reads
//
//	Out of memory: Killed process 812 (echo) total-vm:1258744kB, anon-rss:98620kB, ...
//
// ("Memory cgroup out of memory: …" when a cgroup's limit was reached), one
// line of /dev/kmsg, whose records start "<prio>,<seq>,<µs since boot>,<flags>;".

// oomRecord parses one /dev/kmsg record: whether it is the OOM killer's
// kill of pid, logged at or after since (time since boot), and, if so, who
// killed it and why, in words that follow "killed by signal 9 (killed)".
func oomRecord(rec string, pid int, since time.Duration) (string, bool) {
	head, msg, ok := strings.Cut(rec, ";")
	if !ok {
		return "", false
	}
	if f := strings.Split(head, ","); len(f) < 3 {
		return "", false
	} else if us, err := strconv.ParseInt(f[2], 10, 64); err != nil || time.Duration(us)*time.Microsecond < since {
		return "", false
	}
	msg, _, _ = strings.Cut(msg, "\n") // continuation lines follow
	what, rest, ok := strings.Cut(msg, ": Killed process ")
	if !ok || !strings.HasPrefix(rest, strconv.Itoa(pid)+" (") || !strings.Contains(strings.ToLower(what), "out of memory") {
		return "", false
	}
	reason := "by the kernel's OOM killer: the machine ran out of memory"
	if strings.Contains(strings.ToLower(what), "cgroup") {
		reason = "by the kernel's OOM killer: its memory cgroup reached its limit"
	}
	if kb, ok := kbField(rest, "anon-rss:"); ok {
		reason += fmt.Sprintf(" (the workload had %d MiB)", kb>>10)
	}
	return reason, true
}

// kbField reads "<name><n>kB" out of s.
func kbField(s, name string) (int64, bool) {
	_, v, ok := strings.Cut(s, name)
	if !ok {
		return 0, false
	}
	v, _, ok = strings.Cut(v, "kB")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}
