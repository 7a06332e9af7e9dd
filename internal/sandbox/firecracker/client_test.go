package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nex-engine/nex/internal/sandbox/firecracker/fctest"
)

// apiServer runs fctest's API in process on a unix socket (no VM is
// booted) and returns a Client of it.
func apiServer(t *testing.T) (*fctest.Server, *Client, string) {
	t.Helper()
	dir := t.TempDir()
	s := fctest.New(fctest.Options{ID: "vm1"})
	sock := filepath.Join(dir, APISocket)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s}
	go hs.Serve(ln)
	c := NewClient(sock)
	t.Cleanup(func() { c.Close(); hs.Close(); s.Close() })
	return s, c, dir
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func writeFile(t *testing.T, p, content string) string {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClientBoot drives the whole configuration through the client and
// checks what the server received: paths in order and bodies field by field
// under Firecracker's names.
func TestClientBoot(t *testing.T) {
	s, c, dir := apiServer(t)
	ctx := testCtx(t)
	kernel := writeFile(t, filepath.Join(dir, "vmlinux"), "k")
	initrd := writeFile(t, filepath.Join(dir, "initrd.cpio"), "i")
	uds := filepath.Join(dir, VsockSocket)

	info, err := c.Describe(ctx)
	if err != nil || info.ID != "vm1" || info.State != "Not started" {
		t.Fatalf("Describe = %+v, %v", info, err)
	}
	calls := []struct {
		name string
		do   func() error
	}{
		{"machine config", func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 192}) }},
		{"boot source", func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: kernel, InitrdPath: initrd, BootArgs: "console=ttyS0 nex.id=x"})
		}},
		{"vsock", func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: uds}) }},
		{"start", func() error { return c.Action(ctx, InstanceStart) }},
	}
	for _, call := range calls {
		if err := call.do(); err != nil {
			t.Fatalf("%s: %v", call.name, err)
		}
	}
	if info, err := c.Describe(ctx); err != nil || info.State != "Running" {
		t.Fatalf("Describe after start = %+v, %v", info, err)
	}

	reqs := s.Requests()
	want := []struct {
		method, path string
		body         map[string]any
	}{
		{"GET", "/", nil},
		{"PUT", "/machine-config", map[string]any{"vcpu_count": 2.0, "mem_size_mib": 192.0}},
		{"PUT", "/boot-source", map[string]any{"kernel_image_path": kernel, "initrd_path": initrd, "boot_args": "console=ttyS0 nex.id=x"}},
		{"PUT", "/vsock", map[string]any{"guest_cid": 3.0, "uds_path": uds}},
		{"PUT", "/actions", map[string]any{"action_type": "InstanceStart"}},
		{"GET", "/", nil},
	}
	if len(reqs) != len(want) {
		t.Fatalf("server got %d requests, want %d: %+v", len(reqs), len(want), reqs)
	}
	for i, w := range want {
		r := reqs[i]
		if r.Method != w.method || r.Path != w.path || r.Fault != "" {
			t.Errorf("request %d = %s %s (%d %s); want %s %s", i, r.Method, r.Path, r.Status, r.Fault, w.method, w.path)
			continue
		}
		if w.body == nil {
			continue
		}
		var got map[string]any
		if err := json.Unmarshal(r.Body, &got); err != nil {
			t.Fatalf("request %d body %s: %v", i, r.Body, err)
		}
		if len(got) != len(w.body) {
			t.Errorf("%s body = %v; want exactly %v", w.path, got, w.body)
		}
		for k, v := range w.body {
			if got[k] != v {
				t.Errorf("%s %s = %v; want %v", w.path, k, got[k], v)
			}
		}
	}
}

// TestClientFaults: every refusal comes back as an *APIError carrying the
// request, the status and Firecracker's fault_message.
func TestClientFaults(t *testing.T) {
	_, c, dir := apiServer(t)
	ctx := testCtx(t)
	kernel := writeFile(t, filepath.Join(dir, "vmlinux"), "k")
	cases := []struct {
		name      string
		do        func() error
		path      string
		wantFault string
	}{
		{"start before boot source", func() error { return c.Action(ctx, InstanceStart) }, "/actions", "without kernel configuration"},
		{"ctrl-alt-del before start", func() error { return c.Action(ctx, SendCtrlAltDel) }, "/actions", "before starting"},
		{"too many vcpus", func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 64, MemSizeMiB: 128}) }, "/machine-config", "vCPU number is invalid"},
		{"no memory", func() error { return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1}) }, "/machine-config", "memory size"},
		{"missing kernel", func() error {
			return c.PutBootSource(ctx, BootSource{KernelImagePath: filepath.Join(dir, "nope")})
		}, "/boot-source", "kernel file cannot be opened"},
		{"host cid", func() error { return c.PutVsock(ctx, Vsock{GuestCID: 2, UDSPath: filepath.Join(dir, "v.sock")}) }, "/vsock", "reserved"},
		{"start then configure", func() error {
			if err := c.PutBootSource(ctx, BootSource{KernelImagePath: kernel}); err != nil {
				return err
			}
			if err := c.Action(ctx, InstanceStart); err != nil {
				return err
			}
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
		}, "/machine-config", "after starting"},
	}
	for _, tc := range cases {
		err := tc.do()
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Errorf("%s: err = %v; want an *APIError", tc.name, err)
			continue
		}
		if ae.Status != http.StatusBadRequest || ae.Path != tc.path || ae.Method != http.MethodPut || !strings.Contains(ae.Fault, tc.wantFault) {
			t.Errorf("%s: %+v; want 400 on PUT %s mentioning %q", tc.name, ae, tc.path, tc.wantFault)
		}
		if msg := err.Error(); !strings.Contains(msg, "PUT "+tc.path+": 400 Bad Request: ") || !strings.Contains(msg, tc.wantFault) {
			t.Errorf("%s: message %q names neither the request nor the fault", tc.name, msg)
		}
	}
}

// TestClientNonFirecrackerError: an answer that is not Firecracker's error
// body (something else on the socket) is quoted as it came.
func TestClientNonFirecrackerError(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "other.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream on fire", http.StatusBadGateway)
	})}
	go hs.Serve(ln)
	defer hs.Close()
	c := NewClient(sock)
	defer c.Close()
	err = c.Action(testCtx(t), InstanceStart)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadGateway || ae.Fault != "upstream on fire" {
		t.Fatalf("err = %#v; want a 502 quoting the body", err)
	}
}

// TestClientNoSocket: nothing listening is a dial error naming the request.
func TestClientNoSocket(t *testing.T) {
	c := NewClient(filepath.Join(t.TempDir(), "absent.sock"))
	defer c.Close()
	_, err := c.Describe(testCtx(t))
	var ae *APIError
	if err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "GET /") {
		t.Fatalf("err = %v; want a connection error naming GET /", err)
	}
}
