package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PIDFile is the name of the file, inside a sandbox's Dir, that holds the PID
// of its host process. Drivers write it; Reap reads it.
const PIDFile = "pid"

// WritePID records pid in dir so a later node can reap it after a crash.
func WritePID(dir string, pid int) error {
	return os.WriteFile(filepath.Join(dir, PIDFile), []byte(strconv.Itoa(pid)), 0o600)
}

// Reap kills what a crashed node left behind under root (one directory per
// sandbox) and removes those directories. A PID is killed only when its
// command line still names the sandbox's directory or id, so a PID reused by
// an unrelated process is left alone. It returns the PIDs it killed.
func Reap(root string) ([]int, error) {
	entries, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reap %s: %w", root, err)
	}
	var killed []int
	var errs []error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		if b, err := os.ReadFile(filepath.Join(dir, PIDFile)); err == nil {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if pid > 1 && ownedBy(pid, dir, e.Name()) {
				killGroupAndWait(pid)
				killed = append(killed, pid)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	return killed, errors.Join(errs...)
}

func ownedBy(pid int, dir, id string) bool {
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	return bytes.Contains(cmd, []byte(dir)) || bytes.Contains(cmd, []byte(id)) || bytes.Contains(env, []byte(id))
}

func killGroupAndWait(pid int) {
	// Sandboxes run in their own process group whose id is their PID.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	_ = syscall.Kill(pid, syscall.SIGKILL)
	for i := 0; i < 200; i++ {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
