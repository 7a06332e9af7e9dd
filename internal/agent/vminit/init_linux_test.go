package vminit

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestBootStepsTable(t *testing.T) {
	v := &vm{log: testLog(t), p: guestPaths}
	var names []string
	for _, s := range v.bootSteps() {
		names = append(names, s.name)
	}
	// The order is the contract with the kernel and the host: file systems
	// before the modules, devices before the config channel, everything
	// that needs no identity before init says it is ready (a snapshot
	// template is saved right then), clock and entropy before the agent
	// runs, after the last step.
	want := []string{"mount /proc", "mount /sys", "mount /dev", "mount /tmp", "mount /run", "load modules",
		"loopback up", "network eth0", "listen for workloads", "serve file port", "work dir", "open nats port", "warm up", "config", "set clock", "seed entropy", "node dialers"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("boot steps %v\nwant       %v", names, want)
	}
}

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
