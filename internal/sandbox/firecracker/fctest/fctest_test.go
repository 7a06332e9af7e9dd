package fctest

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nex-engine/nex/internal/accel"
)

// serve runs s on a unix socket in a temp dir and returns a raw HTTP client
// of it.
func serve(t *testing.T, s *Server) (*http.Client, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "fc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close(); s.Close() })
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return hc, dir
}

func put(t *testing.T, hc *http.Client, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, "http://localhost"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if len(b) > 0 {
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("%s answered %q: not Firecracker's error body: %v", path, b, err)
		}
	}
	return resp.StatusCode, f.FaultMessage
}

// TestStrictBodies sends what a client with a wrong field name, a missing
// field or a bad value would, and expects Firecracker's 400 with a
// fault_message that says what is wrong.
func TestStrictBodies(t *testing.T) {
	hc, dir := serve(t, New(Options{}))
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	cases := []struct {
		path, body, want string
	}{
		{"/machine-config", `{"vcpu_count": 1, "mem_size_mb": 128}`, "unknown field"},
		{"/machine-config", `{"vcpu_count": 1}`, "missing field `mem_size_mib`"},
		{"/machine-config", `{"vcpu_count": 33, "mem_size_mib": 128}`, "vCPU number is invalid"},
		{"/machine-config", `{"vcpu_count": 1, "mem_size_mib": 0}`, "memory size"},
		{"/machine-config", ``, "deserializing"},
		{"/boot-source", `{"kernel": "` + kernel + `"}`, "unknown field"},
		{"/boot-source", `{"boot_args": "console=ttyS0"}`, "missing field `kernel_image_path`"},
		{"/boot-source", `{"kernel_image_path": "/nonexistent/vmlinux"}`, "kernel file cannot be opened"},
		{"/boot-source", `{"kernel_image_path": "` + kernel + `", "initrd_path": "/nonexistent/initrd"}`, "initrd file cannot be opened"},
		{"/vsock", `{"guest_cid": 2, "uds_path": "` + filepath.Join(dir, "v.sock") + `"}`, "CID 2 is reserved"},
		{"/vsock", `{"uds_path": "` + filepath.Join(dir, "v.sock") + `"}`, "missing field `guest_cid`"},
		{"/actions", `{"action_type": "Reboot"}`, "unknown variant `Reboot`"},
		{"/actions", `{"action_type": "InstanceStart"}`, "without kernel configuration"},
		{"/actions", `{"action_type": "SendCtrlAltDel"}`, "before starting"},
		{"/drives/rootfs", `{}`, "Invalid request method and/or path"},
	}
	for _, c := range cases {
		status, fault := put(t, hc, c.path, c.body)
		if status != http.StatusBadRequest || !strings.Contains(fault, c.want) {
			t.Errorf("PUT %s %s = %d %q; want 400 mentioning %q", c.path, c.body, status, fault, c.want)
		}
	}
}

// TestOrderAndRecord boots nothing: the configuration is accepted in
// Firecracker's order, recorded with its bodies, and refused after start.
func TestOrderAndRecord(t *testing.T) {
	var rec strings.Builder
	s := New(Options{ID: "vm1", Record: &rec})
	hc, dir := serve(t, s)
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, []byte("kernel"), 0o600)
	uds := filepath.Join(dir, "v.sock")
	steps := []struct{ path, body string }{
		{"/machine-config", `{"vcpu_count": 2, "mem_size_mib": 256}`},
		{"/boot-source", `{"kernel_image_path": "` + kernel + `", "boot_args": "console=ttyS0"}`},
		{"/vsock", `{"guest_cid": 3, "uds_path": "` + uds + `"}`},
		{"/actions", `{"action_type": "InstanceStart"}`},
	}
	for _, st := range steps {
		if status, fault := put(t, hc, st.path, st.body); status != http.StatusNoContent {
			t.Fatalf("PUT %s = %d %q", st.path, status, fault)
		}
	}
	<-s.Started()
	if _, err := os.Stat(uds); err != nil {
		t.Errorf("uds_path not bound at PUT /vsock, as Firecracker binds it: %v", err)
	}
	if status, fault := put(t, hc, "/machine-config", `{"vcpu_count": 1, "mem_size_mib": 128}`); status != http.StatusBadRequest || !strings.Contains(fault, "after starting") {
		t.Errorf("machine-config after start = %d %q", status, fault)
	}
	if status, _ := put(t, hc, "/actions", `{"action_type": "SendCtrlAltDel"}`); status != http.StatusNoContent {
		t.Errorf("SendCtrlAltDel = %d", status)
	}
	<-s.VM().Done()
	if err := s.VM().Err(); err != nil {
		t.Errorf("machine ended with %v after Ctrl+Alt+Del; want a clean end", err)
	}

	reqs := s.Requests()
	var paths []string
	for _, r := range reqs {
		paths = append(paths, r.Path)
	}
	want := []string{"/machine-config", "/boot-source", "/vsock", "/actions", "/machine-config", "/actions"}
	if !slices.Equal(paths, want) {
		t.Fatalf("recorded %v, want %v", paths, want)
	}
	var mc map[string]int
	if err := json.Unmarshal(reqs[0].Body, &mc); err != nil || mc["vcpu_count"] != 2 || mc["mem_size_mib"] != 256 {
		t.Errorf("recorded machine-config body %s", reqs[0].Body)
	}
	if reqs[4].Status != http.StatusBadRequest || reqs[4].Fault == "" {
		t.Errorf("refusal recorded as %+v", reqs[4])
	}
	if lines := strings.Count(rec.String(), "\n"); lines != len(want) {
		t.Errorf("record has %d lines, want %d:\n%s", lines, len(want), rec.String())
	}
}

func TestTranslateBootArgs(t *testing.T) {
	in := "console=ttyS0 reboot=k nex.id=sb1 nex.nats=vsock://2:4222 nex.seed=SUABC"
	got, ports, err := TranslateBootArgs(in, 2445404)
	if err != nil {
		t.Fatal(err)
	}
	want := "console=ttyS0 reboot=k nex.id=sb1 nex.nats=nats://10.0.2.100:4222 nex.seed=SUABC tsc_early_khz=2445404 tsc=reliable"
	if got != want || !slices.Equal(ports, []uint32{4222}) {
		t.Fatalf("TranslateBootArgs =\n %q %v\nwant\n %q [4222]", got, ports, want)
	}
	// Not a vsock URL: left alone; no TSC known: nothing added.
	if got, ports, err := TranslateBootArgs("nex.nats=nats://127.0.0.1:4222", 0); err != nil || got != "nex.nats=nats://127.0.0.1:4222" || ports != nil {
		t.Errorf("plain url: %q %v %v", got, ports, err)
	}
	if _, _, err := TranslateBootArgs("nex.nats=vsock://5:4222", 0); err == nil || !strings.Contains(err.Error(), "CID 2") {
		t.Errorf("vsock to another guest: err = %v; want a refusal naming CID 2", err)
	}
}

// TestQEMUArgs checks the translation of the vsock device into a guestfwd
// to Firecracker's per-port socket, and the machine's size and console.
func TestQEMUArgs(t *testing.T) {
	q := QEMU{Forwarder: []string{"/usr/bin/nex", "vm-forward"}, Accel: accel.TCG}
	args, err := q.Args(Machine{
		VCPUCount: 2, MemSizeMiB: 256, Kernel: "/img/vmlinux", Initrd: "/img/initrd.cpio",
		BootArgs: "console=ttyS0 nex.nats=vsock://2:4222", VsockUDS: "/state/sb1/v.sock", GuestCID: 3,
	})
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-M microvm", "-m 256", "-smp 2", "-accel tcg", "-kernel /img/vmlinux", "-initrd /img/initrd.cpio",
		"-serial stdio", "nex.nats=nats://10.0.2.100:4222",
		"-netdev user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:4222-cmd:'/usr/bin/nex' 'vm-forward' 'unix:/state/sb1/v.sock_4222'",
		"-device virtio-net-device,netdev=n0",
		// reboot=k must end QEMU as it ends Firecracker.
		"-no-reboot", "-device i8042",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("args lack %q:\n%s", want, line)
		}
	}
	// Without a vsock device the guest gets no network at all.
	args, err = q.Args(Machine{VCPUCount: 1, MemSizeMiB: 128, Kernel: "/img/vmlinux", BootArgs: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	if line := strings.Join(args, " "); strings.Contains(line, "-netdev") || strings.Contains(line, "-initrd") {
		t.Errorf("no vsock, no initrd: %s", line)
	}
}
