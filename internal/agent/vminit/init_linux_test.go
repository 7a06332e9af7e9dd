package vminit

import (
	"reflect"
	"testing"
)

func TestBootStepsTable(t *testing.T) {
	v := &vm{log: testLog(t), p: guestPaths}
	var names []string
	for _, s := range v.bootSteps() {
		names = append(names, s.name)
	}
	// The order is the contract with the kernel: file systems before
	// modules, devices before the config channel, identity before anything
	// that uses it.
	want := []string{"mount /proc", "mount /sys", "mount /dev", "mount /tmp", "mount /run", "load modules",
		"loopback up", "network eth0", "config", "set clock", "seed entropy", "nats forwarder"}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("boot steps %v\nwant       %v", names, want)
	}
}
