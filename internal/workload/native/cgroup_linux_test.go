package native

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// memoryCgroup makes a memory cgroup limited to limit bytes, removed when t
// ends, and returns its directory. It skips t without root or without a
// memory controller (cgroup v2's, or v1's).
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a memory cgroup needs root")
	}
	name := fmt.Sprintf("nex-test-%d", os.Getpid())
	var dir string
	files := map[string]string{}
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.subtree_control"); err == nil && slices.Contains(strings.Fields(string(b)), "memory") {
		dir = filepath.Join("/sys/fs/cgroup", name)
		files["memory.max"] = strconv.FormatInt(limit, 10)
		files["memory.swap.max"] = "0"
	} else if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err == nil {
		dir = filepath.Join("/sys/fs/cgroup/memory", name)
		files["memory.limit_in_bytes"] = strconv.FormatInt(limit, 10)
		files["memory.swappiness"] = "0"
	} else {
		t.Skip("no memory cgroup controller on this host")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Its processes are gone once the test's workloads have been waited for.
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("cgroup %s left behind", dir)
	})
	for f, v := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil && f != "memory.swap.max" {
			t.Fatalf("%s: %v", f, err)
		}
	}
	return dir
}
