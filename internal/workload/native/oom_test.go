package native

import (
	"strings"
	"testing"
	"time"
)

func TestOOMRecord(t *testing.T) {
	const global = "3,812,5123456,-;Out of memory: Killed process 812 (echo) total-vm:1258744kB, anon-rss:98620kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:300kB oom_score_adj:0\n"
	const memcg = "3,90,7000000,-;Memory cgroup out of memory: Killed process 4242 (dd) total-vm:265000kB, anon-rss:31744kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:96kB oom_score_adj:0\n"
	for _, tc := range []struct {
		name  string
		rec   string
		pid   int
		since time.Duration
		want  string // "" for no match
	}{
		{"global", global, 812, 5 * time.Second, "by the kernel's OOM killer: the machine ran out of memory (the workload had 96 MiB)"},
		{"memcg", memcg, 4242, 0, "by the kernel's OOM killer: its memory cgroup reached its limit (the workload had 31 MiB)"},
		{"another pid", global, 81, 0, ""},
		{"a longer pid", global, 8120, 0, ""},
		{"logged before the workload started", global, 812, 6 * time.Second, ""},
		{"not the OOM killer", "5,1,2,-;tty1: SAK: killed process 812 (echo): by session\n", 812, 0, ""},
		{"no anon-rss", "3,1,2,-;Out of memory: Killed process 812 (echo)\n", 812, 0, "by the kernel's OOM killer: the machine ran out of memory"},
		{"no header", "Out of memory: Killed process 812 (echo)", 812, 0, ""},
		{"bad time", "3,1,x,-;Out of memory: Killed process 812 (echo)", 812, 0, ""},
	} {
		got, ok := oomRecord(tc.rec, tc.pid, tc.since)
		if ok != (tc.want != "") || got != tc.want {
			t.Errorf("%s: %q, %v; want %q", tc.name, got, ok, tc.want)
		}
	}
}

// A workload that its memory cgroup's limit gets killed: the exit says
// so, from the kernel's log. (In a VM the guest's own OOM killer does it:
// the qemu driver's tests.)
func TestExitSaysOutOfMemory(t *testing.T) {
	cg := memoryCgroup(t, 32<<20)
	// dd's 256 MiB block is read into, so touched, at once.
	p := script(t, `echo $$ > `+cg+`/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=256M count=1`)
	h, _, errOut := start(t, p, nil)
	ex := wait(t, h)
	if ex.Code != 137 || !strings.HasPrefix(ex.Message, "killed by signal 9") ||
		!strings.Contains(ex.Message, "OOM killer: its memory cgroup reached its limit (the workload had ") {
		t.Fatalf("exit = %+v, stderr %q", ex, errOut.String())
	}

	// Killed by hand, it says nothing of memory.
	p = script(t, `kill -9 $$`)
	h, _, _ = start(t, p, nil)
	if ex := wait(t, h); ex.Code != 137 || strings.Contains(ex.Message, "OOM") {
		t.Fatalf("exit = %+v", ex)
	}
}
