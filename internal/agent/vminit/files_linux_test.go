package vminit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
)

// TestFileServerFullTmpfs stages files into a real 256 KiB tmpfs, mounted
// in a mount namespace of the test's own (the host's mounts are left
// alone): a file larger than the room left is refused before it is
// written; when the room check is fooled, the write fails with ENOSPC and
// the answer says so; either way the stream stays in step and no partial
// file is left.
func TestFileServerFullTmpfs(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), filesRole+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if errors.Is(err, syscall.EPERM) {
		t.Skip("no new mount namespace for this user")
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s", out)
}

func fullTmpfsHelper() int {
	if err := fullTmpfs(); err != nil {
		fmt.Println(err)
		return 1
	}
	return 0
}

func fullTmpfs() error {
	// Private propagation first: the tmpfs must not show in the host's
	// namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	dir, err := os.MkdirTemp("", "nex-files-")
	if err != nil {
		return err
	}
	defer os.Remove(dir)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		return fmt.Errorf("mount tmpfs: %w", err)
	}
	defer unix.Unmount(dir, 0)

	var fool atomic.Bool
	room := func(d string) (int64, error) {
		if fool.Load() {
			return 1 << 30, nil
		}
		return defaultRoom(d)
	}
	ln, err := net.Listen("unix", filepath.Join(os.TempDir(), fmt.Sprintf("nex-files-%d.sock", os.Getpid())))
	if err != nil {
		return err
	}
	defer ln.Close()
	host, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		return err
	}
	defer host.Close()
	guest, err := ln.Accept()
	if err != nil {
		return err
	}
	defer guest.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	staged := filepath.Join(dir, "staged")
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go (&FileServer{Dir: staged, Log: log, Room: room}).Serve(ctx, guest)

	replies := bufio.NewReader(host)
	send := func(name string, body []byte) (agentapi.FileReply, error) {
		var r agentapi.FileReply
		h, _ := json.Marshal(agentapi.FileHeader{Name: name, Size: int64(len(body))})
		host.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := host.Write(append(append(h, '\n'), body...)); err != nil {
			return r, err
		}
		line, err := replies.ReadBytes('\n')
		if err != nil {
			return r, err
		}
		return r, json.Unmarshal(line, &r)
	}
	big := bytes.Repeat([]byte("x"), 512<<10)
	r, err := send("big", big)
	if err != nil {
		return err
	}
	if !strings.Contains(r.Error, "does not fit") {
		return fmt.Errorf("512 KiB into a 256 KiB tmpfs: reply %+v, want 'does not fit'", r)
	}
	fmt.Println("refused before writing:", r.Error)
	fool.Store(true)
	if r, err = send("big", big); err != nil {
		return err
	}
	if !strings.Contains(r.Error, "is full") || !strings.Contains(r.Error, "no space left") {
		return fmt.Errorf("write into a full tmpfs: reply %+v, want 'is full' and ENOSPC", r)
	}
	fmt.Println("write failed:", r.Error)
	small := []byte("fits")
	if r, err = send("small", small); err != nil {
		return err
	}
	if r.Error != "" {
		return fmt.Errorf("small file after a full tmpfs: %s", r.Error)
	}
	if got, err := os.ReadFile(r.Path); err != nil || !bytes.Equal(got, small) {
		return fmt.Errorf("small file: %q, %v", got, err)
	}
	ents, _ := os.ReadDir(staged)
	if len(ents) != 1 {
		return fmt.Errorf("staged dir holds %d entries, want only the small file (part files left?)", len(ents))
	}
	return nil
}
