package vminit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
)

// memHeadroom is guest memory a staged file must leave free: the kernel,
// init and the agent keep running, and the workload has yet to start.
const memHeadroom = 8 << 20

// serveFiles starts the file server on the file port (agentapi.FilePortName)
// and returns at once: the port shows up shortly after the virtio-serial
// module loads, and boot need not wait for it. It runs before init says it
// is ready, so a snapshot template is saved with the port open and its
// server waiting for a frame, and every clone has it. A VM without
// virtio-serial (Firecracker), or without the port, gets its artifacts over
// NATS.
func (v *vm) serveFiles(ctx context.Context) error {
	if !hasVirtioDevice(v.p.sysfs, virtioConsoleID) {
		return nil
	}
	log := v.log.With("port", agentapi.FilePortName)
	s := &FileServer{Dir: agentapi.StagedDir, Log: log}
	go func() {
		f, err := v.openPort(ctx, agentapi.FilePortName)
		if err != nil {
			log.Info("no file port; artifacts will come over NATS", keyError, err)
			return
		}
		defer f.Close()
		if err := s.Serve(ctx, f); err != nil {
			log.Warn("file port closed", keyError, err)
		}
	}()
	return nil
}

// defaultRoom is what a new file in dir may take: the free space of dir's
// file system (a tmpfs, in RAM), and no more than the memory the guest has
// available less memHeadroom.
func defaultRoom(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("statfs: %w", err)
	}
	free := int64(st.Bavail) * st.Bsize
	if avail, err := memAvailable("/proc/meminfo"); err == nil {
		free = min(free, avail-memHeadroom)
	}
	return max(free, 0), nil
}

// memAvailable reads MemAvailable from a /proc/meminfo.
func memAvailable(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: MemAvailable %q: %w", path, rest, err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no MemAvailable", path)
}
