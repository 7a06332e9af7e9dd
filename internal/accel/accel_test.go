package accel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDetectAt(t *testing.T) {
	// Each case lays out a fake root: directories under sys/module, and
	// /dev/kvm as an openable file, an unopenable directory, or absent.
	tests := []struct {
		name    string
		modules []string
		dev     string // "file", "dir" (cannot be opened read-write) or ""
		want    Kind
		reason  string
	}{
		{"intel", []string{"kvm", "kvm_intel"}, "file", KVM, "kvm_intel is loaded"},
		{"amd", []string{"kvm", "kvm_amd"}, "file", KVM, "kvm_amd is loaded"},
		{"pvm nested hypervisor", []string{"kvm", "kvm_pvm"}, "file", TCG, "kvm_pvm nested hypervisor cannot run a stock kernel; using TCG"},
		{"dev node without module", []string{"kvm"}, "file", TCG, "neither kvm_intel nor kvm_amd"},
		{"module without dev node", []string{"kvm", "kvm_intel"}, "", TCG, "cannot be opened read-write"},
		{"dev node not openable", []string{"kvm", "kvm_amd"}, "dir", TCG, "cannot be opened read-write (is a directory)"},
		{"nothing", nil, "", TCG, "no KVM on this host"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, m := range tt.modules {
				mkdir(t, filepath.Join(root, "sys", "module", m))
			}
			dev := filepath.Join(root, "dev", "kvm")
			switch tt.dev {
			case "file":
				mkdir(t, filepath.Dir(dev))
				if err := os.WriteFile(dev, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			case "dir":
				mkdir(t, dev)
			}
			got := DetectAt(root)
			if got.Accel != tt.want || !strings.Contains(got.Reason, tt.reason) {
				t.Fatalf("DetectAt = %+v, want %s with reason containing %q", got, tt.want, tt.reason)
			}
			if got.KVM() != (tt.want == KVM) {
				t.Fatalf("KVM() = %v for %s", got.KVM(), got.Accel)
			}
		})
	}
}

func mkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}
