package vminit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/trial"
)

// memHeadroom is guest memory a staged file must leave free: the kernel,
// init and the agent keep running, and the workload has yet to start.
const memHeadroom = 8 << 20

// trialDir holds the jails of trial starts: on the tmpfs of
// agentapi.StagedDir, as hard links to staged files need.
const trialDir = "/tmp/trial"

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
	v.trials = &trial.Runner{Dir: trialDir, Log: v.log}
	s.Trial, s.Deleted = v.trials.Start, v.trials.Stop
	if hasVirtioDevice(v.p.sysfs, virtioBlock) {
		s.Disk = v.openStageDisk
	}
	v.files = s
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

// openStageDisk opens the stage disk (the virtio-blk device whose serial is
// agentapi.StageDiskSerial) for FileServer.Disk, with O_DIRECT: the reads
// go to the device (what the kernel may hold of it from before, its
// partition scan at boot, is stale once the host has written a file) and
// straight into the copy's buffer, without filling the page cache with a
// second copy of the file. Under emulation the page cache's work for each
// 4 KiB page is what a copy costs most.
func (v *vm) openStageDisk() (*os.File, func(), error) {
	dev, err := findStageDisk(v.p.sysfs, v.p.dev)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return nil, nil, err
	}
	// Free what the boot's partition scan cached; nothing reads it.
	_ = unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0)
	return f, func() { f.Close() }, nil
}

// findStageDisk returns the device node of the block device under sysfs
// whose serial is agentapi.StageDiskSerial, making the node if devtmpfs has
// not.
func findStageDisk(sysfs, devDir string) (string, error) {
	serials, _ := filepath.Glob(filepath.Join(sysfs, "block", "*", "serial"))
	for _, p := range serials {
		b, err := os.ReadFile(p)
		if err != nil || strings.TrimSpace(string(b)) != agentapi.StageDiskSerial {
			continue
		}
		name := filepath.Base(filepath.Dir(p))
		return sysfsDevice(filepath.Join(sysfs, "block", name, "dev"), filepath.Join(devDir, name),
			func(path string, major, minor uint32) error {
				return unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor)))
			})
	}
	return "", fmt.Errorf("no block device with serial %q", agentapi.StageDiskSerial)
}

// diskChunk is the size of one read of the stage disk.
const diskChunk = 1 << 20

// copyFromDisk copies size bytes from the start of disk to dst. The buffer
// is page-aligned and each read a whole number of pages, as O_DIRECT needs
// (the disk is larger than any file it holds).
func copyFromDisk(dst, disk *os.File, size int64) error {
	buf, err := unix.Mmap(-1, 0, diskChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("copy from the stage disk: buffer: %w", err)
	}
	defer unix.Munmap(buf)
	for off := int64(0); off < size; {
		want := min(size-off, diskChunk)
		n, err := disk.ReadAt(buf[:(want+4095)&^4095], off)
		if int64(n) < want {
			if err == nil || errors.Is(err, io.EOF) {
				return fmt.Errorf("stage disk ended after %d of %d bytes", off+int64(n), size)
			}
			return fmt.Errorf("copy from the stage disk: %w", err)
		}
		if _, err := dst.Write(buf[:want]); err != nil {
			return err
		}
		off += want
	}
	return nil
}
