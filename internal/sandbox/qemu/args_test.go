package qemu

import (
	"errors"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/accel"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestArgsGolden pins the command lines: each golden file holds one
// argument per line.
func TestArgsGolden(t *testing.T) {
	base := machine{
		Name:      "nex-vm1",
		Kernel:    "/images/abc/vmlinux",
		Initrd:    "/images/abc/initrd.cpio",
		MemoryMiB: 128,
		VCPU:      1,
		Accel:     accel.TCG,
		TBSizeMiB: 64,
		TSCkHz:    2445404,
		BIOS:      "/usr/share/qemu/qboot.rom",
	}
	noBIOS := base
	noBIOS.BIOS = ""
	kvm := base
	kvm.Accel, kvm.VCPU, kvm.MemoryMiB = accel.KVM, 2, 256
	tcgSMP := base
	tcgSMP.VCPU = 2
	template := base
	template.RAM = &ramFile{Path: "/snap/k1.tmp-1/ram.img", Shared: true}
	clone := base
	clone.RAM = &ramFile{Path: "/snap/k1/ram.img"}
	clone.Incoming = true
	noTSC := base
	noTSC.TSCkHz = 0
	comma := clone
	comma.RAM = &ramFile{Path: "/snap/a,b/ram.img"}

	noACPI := clone
	noACPI.NoACPI = true
	noACPICold := base
	noACPICold.NoACPI = true

	for name, m := range map[string]machine{
		"cold_tcg": base, "cold_kvm": kvm, "cold_tcg_2vcpu": tcgSMP, "template": template, "clone": clone,
		"no_tsc": noTSC, "comma_in_path": comma, "no_acpi_clone": noACPI, "no_acpi_cold": noACPICold,
		"no_bios": noBIOS,
	} {
		t.Run(name, func(t *testing.T) {
			got := strings.Join(m.args(), "\n") + "\n"
			golden := filepath.Join("testdata", name+".args")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run TestArgsGolden -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("args differ from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestTSCkHzFrom(t *testing.T) {
	tests := []struct {
		cpuinfo string
		want    int
	}{
		{"processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2445.404\ncache size\t: 4096 KB\n", 2445404},
		{"cpu MHz : 2999.9996\n", 3000000},
		{"processor : 0\n", 0},
		{"cpu MHz : fast\n", 0},
	}
	for _, tt := range tests {
		if got := tscKHzFrom(strings.NewReader(tt.cpuinfo)); got != tt.want {
			t.Errorf("tscKHzFrom(%q) = %d, want %d", tt.cpuinfo, got, tt.want)
		}
	}
}

func TestNATSUpstream(t *testing.T) {
	tests := []struct {
		url, want, wantErr string
	}{
		{"nats://127.0.0.1:41339", "127.0.0.1:41339", ""},
		{"nats://localhost:4222", "localhost:4222", ""},
		{"nats://127.0.0.1", "127.0.0.1:4222", ""},
		{"nats://node.example:4222", "node.example:4222", ""},
		{"nats://[::1]:4222", "[::1]:4222", ""},
		{"nats://127.0.0.1:0", "", "bad port"},
		{"nats://:4222", "", "no host"},
	}
	for _, tt := range tests {
		got, err := natsUpstream(tt.url)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("natsUpstream(%q) error = %v, want %q", tt.url, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("natsUpstream(%q) = %q, %v; want %q", tt.url, got, err, tt.want)
		}
	}
}

func TestBootSteps(t *testing.T) {
	names := func(s steps) string {
		var n []string
		for _, st := range s {
			n = append(n, st.Name)
		}
		return strings.Join(n, ", ")
	}
	tests := []struct {
		name  string
		steps steps
		want  string
	}{
		{"cold", coldBoot(), "prepare dir, listen config socket, create stage disk, listen file socket, listen nats port socket, listen qmp socket, build args, launch, write pid, log machine started, serve config channel"},
		{"clone", cloneBoot(), "prepare dir, listen config socket, create stage disk, listen file socket, listen nats port socket, listen qmp socket, build args, launch, write pid, restore snapshot, log machine started, serve config channel"},
		{"template", templateBoot(), "prepare dir, listen config socket, create stage disk, listen file socket, listen nats port socket, listen qmp socket, build args, launch, write pid, log machine started, await guest ready, save snapshot, quit"},
	}
	for _, tt := range tests {
		if got := names(tt.steps); got != tt.want {
			t.Errorf("%s boot steps:\n got %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		c    Config
		want string
	}{
		{Config{Initrd: "i"}, "Kernel is empty"},
		{Config{Kernel: "k"}, "Initrd is empty"},
		{Config{Kernel: "k", Initrd: "i", Accel: "hvf"}, `Accel "hvf"`},
		{Config{Kernel: "k", Initrd: "i", Snapshot: true}, "SnapshotDir is empty"},
		{Config{Kernel: "k", Initrd: "i", BootTimeout: -1}, "BootTimeout"},
		{Config{Kernel: "k", Initrd: "i"}, ""},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if (tt.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tt.c, err, tt.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "initrd")
	for _, p := range []string{kernel, initrd} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	newDriver := func(snapshot bool) *Driver {
		d, err := New(Config{Kernel: kernel, Initrd: initrd, Snapshot: snapshot, SnapshotDir: t.TempDir(),
			Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	if got := newDriver(false).Describe(); !strings.Contains(got, "cold boots (vm_snapshots is off)") {
		t.Errorf("snapshots off: %q", got)
	}
	d := newDriver(true)
	if got := d.Describe(); !strings.Contains(got, "made at the first start") {
		t.Errorf("no template yet: %q", got)
	}
	small, big := Shape{VCPU: 1, MemoryMiB: 128}, Shape{VCPU: 2, MemoryMiB: 512}
	d.templates[big] = &templateEntry{t: &template{dir: filepath.Join(dir, "0123456789abcdef")}}
	d.templates[small] = &templateEntry{failed: time.Now(), failedErr: errors.New("qemu exited: no room")}
	got := d.Describe()
	want := []string{"1 vCPU/128 MiB: cold boots, the template failed", "no room",
		"2 vCPU/512 MiB: snapshot clones of template 0123456789abcdef"}
	for _, w := range want {
		if !strings.Contains(got, w) {
			t.Errorf("Describe() = %q, lacks %q", got, w)
		}
	}
	if strings.Index(got, "1 vCPU") > strings.Index(got, "2 vCPU") {
		t.Errorf("sizes out of order: %q", got)
	}
	// A build in progress holds its entry; node info must not wait for it.
	d.templates[small].mu.Lock()
	defer d.templates[small].mu.Unlock()
	if got := d.Describe(); !strings.Contains(got, "1 vCPU/128 MiB: template being built") {
		t.Errorf("while building: %q", got)
	}
}
