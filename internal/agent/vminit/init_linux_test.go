package vminit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/agentapi"
)

func TestBootStepsTable(t *testing.T) {
	v := &vm{log: testLog(t), p: guestPaths}
	var names []string
	for _, s := range v.bootSteps() {
		names = append(names, s.name)
	}
	// The order is the contract with the kernel and the host: file systems
	// before the agent child and the modules, devices before the config
	// channel, the child initialized before init says it is ready (a
	// snapshot template is saved right then), clock and entropy before the
	// child gets its identity.
	want := []string{"mount /proc", "mount /sys", "mount /dev", "mount /tmp", "mount /run", "start agent", "load modules",
		"loopback up", "network eth0", "listen for workloads", "serve file port", "warm up", "agent initialized", "config", "set clock", "seed entropy", "nats forwarder", "agent identity"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("boot steps %v\nwant       %v", names, want)
	}
}

// socketPair is the pair startAgent makes: init's end and the child's fd 3.
func socketPair(t *testing.T) (initEnd, childEnd *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	initEnd, childEnd = os.NewFile(uintptr(fds[0]), "agent"), os.NewFile(uintptr(fds[1]), "init")
	t.Cleanup(func() { initEnd.Close(); childEnd.Close() })
	return initEnd, childEnd
}

// TestAgentHandover plays both sides of fd 3: the child says it is ready
// and only then gets its metadata, which init sends once it has it.
func TestAgentHandover(t *testing.T) {
	initEnd, childEnd := socketPair(t)
	want := agentapi.Metadata{SandboxID: "sb1", NATSURL: "nats://10.0.2.100:4222", Seed: "SUFAKE"}
	type result struct {
		m   agentapi.Metadata
		err error
	}
	got := make(chan result, 1)
	go func() {
		m, err := receiveMetadata(childEnd)
		got <- result{m, err}
	}()
	if err := awaitReady(context.Background(), initEnd); err != nil {
		t.Fatalf("awaitReady: %v", err)
	}
	if err := handOver(initEnd, want); err != nil {
		t.Fatalf("handOver: %v", err)
	}
	r := <-got
	if r.err != nil || r.m != want {
		t.Fatalf("child got %+v, %v; want %+v", r.m, r.err, want)
	}
}

// TestAwaitReadyChildGone: a child that dies during its start-up ends the
// wait with an error instead of hanging the boot.
func TestAwaitReadyChildGone(t *testing.T) {
	initEnd, childEnd := socketPair(t)
	childEnd.Close()
	err := awaitReady(context.Background(), initEnd)
	if err == nil || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("awaitReady after the child closed: %v", err)
	}

	initEnd2, _ := socketPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := awaitReady(ctx, initEnd2); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("awaitReady past its context: %v", err)
	}
}

// Without ACPI, reboot(POWER_OFF) halts and the VMM runs on, so PID 1 must
// know to restart instead (QEMU's -no-reboot, Firecracker's reboot=k).
func TestCanPowerOff(t *testing.T) {
	sysfs := t.TempDir()
	if canPowerOff(sysfs) {
		t.Fatal("a sysfs without firmware/acpi says the guest can power off")
	}
	if err := os.MkdirAll(filepath.Join(sysfs, "firmware", "acpi"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !canPowerOff(sysfs) {
		t.Fatal("a sysfs with firmware/acpi says the guest cannot power off")
	}
}
