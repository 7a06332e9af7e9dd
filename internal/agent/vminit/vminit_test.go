package vminit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestRunStepsOrderAndFailure(t *testing.T) {
	var ran []string
	mk := func(name string, err error, optional bool) step {
		return step{name: name, optional: optional, run: func(context.Context) error { ran = append(ran, name); return err }}
	}
	boom := errors.New("boom")
	err := runSteps(context.Background(), testLog(t), []step{
		mk("a", nil, false),
		mk("b", errors.New("soft"), true),
		mk("c", boom, false),
		mk("d", nil, false),
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "init step c") {
		t.Fatalf("err = %v, want the failure of step c", err)
	}
	if want := []string{"a", "b", "c"}; !reflect.DeepEqual(ran, want) {
		t.Fatalf("ran %v, want %v", ran, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran = nil
	if err := runSteps(ctx, testLog(t), []step{mk("a", nil, false)}); !errors.Is(err, context.Canceled) || len(ran) != 0 {
		t.Fatalf("cancelled: err %v, ran %v", err, ran)
	}
}

// fakeSysfs lays out the bits of /sys that init reads.
func fakeSysfs(t *testing.T, ports map[string]string, devices map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for port, name := range ports {
		d := filepath.Join(root, "class", "virtio-ports", port)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte(name+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "dev"), []byte("243:1\n"), 0o644)
	}
	for dev, id := range devices {
		d := filepath.Join(root, "bus", "virtio", "devices", dev)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "device"), []byte(id+"\n"), 0o644)
	}
	return root
}

func TestPortDiscovery(t *testing.T) {
	sys := fakeSysfs(t,
		map[string]string{"vport0p0": "org.qemu.guest_agent.0", "vport1p1": agentapi.ConfigPortName},
		map[string]string{"virtio0": "0x0001", "virtio1": "0x0003"})
	if p := findPort(sys, agentapi.ConfigPortName); p != "vport1p1" {
		t.Fatalf("findPort = %q, want vport1p1", p)
	}
	if p := findPort(sys, "absent"); p != "" {
		t.Fatalf("findPort(absent) = %q", p)
	}
	if !hasVirtioDevice(sys, virtioConsoleID) || !hasVirtioDevice(sys, virtioNet) || hasVirtioDevice(sys, 19) {
		t.Fatal("virtio device ids misread")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := waitPort(ctx, sys, "absent"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waitPort(absent) err = %v", err)
	}
	// A port named after the wait began is found.
	go func() {
		d := filepath.Join(sys, "class", "virtio-ports", "vport2p1")
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "name"), []byte("late\n"), 0o644)
	}()
	if p, err := waitPort(context.Background(), sys, "late"); err != nil || p != "vport2p1" {
		t.Fatalf("waitPort(late) = %q, %v", p, err)
	}

	dev := t.TempDir()
	var made string
	var maj, min uint32
	mknod := func(p string, a, b uint32) error { made, maj, min = p, a, b; return os.WriteFile(p, nil, 0o600) }
	got, err := portDevice(sys, dev, "vport1p1", mknod)
	if err != nil || got != filepath.Join(dev, "vport1p1") || made != got || maj != 243 || min != 1 {
		t.Fatalf("portDevice = %q, %v (mknod %q %d:%d)", got, err, made, maj, min)
	}
	made = ""
	if got, err := portDevice(sys, dev, "vport1p1", mknod); err != nil || made != "" || got == "" {
		t.Fatalf("existing node: %q, %v, mknod called for %q", got, err, made)
	}
}

func TestExchangeConfig(t *testing.T) {
	guest, host := net.Pipe()
	defer guest.Close()
	want := agentapi.VMConfig{
		Metadata: agentapi.Metadata{SandboxID: "sb1", NATSURL: "nats://10.0.2.100:4222", Seed: "SUFAKE"},
		Now:      time.Date(2026, 11, 29, 5, 0, 0, 0, time.UTC),
		Entropy:  []byte{1, 2, 3},
	}
	go func() {
		defer host.Close()
		line, err := bufio.NewReader(host).ReadString('\n')
		if err != nil || line != agentapi.ReadyLine+"\n" {
			return
		}
		json.NewEncoder(host).Encode(want)
	}()
	got, err := exchangeConfig(guest)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config %+v, want %+v", got, want)
	}

	guest2, host2 := net.Pipe()
	go func() {
		bufio.NewReader(host2).ReadString('\n')
		host2.Write([]byte(`{"metadata":{"id":"x"}}` + "\n"))
		host2.Close()
	}()
	if _, err := exchangeConfig(guest2); err == nil || !strings.Contains(err.Error(), "nats url") {
		t.Fatalf("incomplete metadata: err = %v", err)
	}
}

func TestConfigFromCmdline(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cmdline")
	m := agentapi.Metadata{SandboxID: "fc1", NATSURL: "nats://10.0.2.100:4222", Seed: "SUFAKE"}
	os.WriteFile(p, []byte("console=ttyS0 quiet "+m.KernelArgs()+" panic=-1\n"), 0o644)
	cfg, err := configFromCmdline(p)
	if err != nil || cfg.Metadata != m {
		t.Fatalf("cmdline config = %+v, %v", cfg, err)
	}
	os.WriteFile(p, []byte("console=ttyS0 nex.id=fc1\n"), 0o644)
	if _, err := configFromCmdline(p); err == nil || !strings.Contains(err.Error(), "kernel command line") {
		t.Fatalf("partial cmdline: err = %v", err)
	}
}

// natsServer runs a NATS server on loopback, with users if any are given,
// until the test ends.
func natsServer(t *testing.T, users []*server.User) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(5 * time.Second) {
		t.Fatal("nats server not ready")
	}
	return s
}

// TestForwardToNATS runs a real NATS server behind the forwarder and talks
// to it through the forwarded address, as a workload in a VM does.
func TestForwardToNATS(t *testing.T) {
	s := natsServer(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var d net.Dialer
	target := s.Addr().String()
	done := make(chan error, 1)
	go func() {
		done <- newForwarder(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) }, testLog(t)).serve(ln)
	}()

	nc, err := nats.Connect("nats://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync("fwd.test")
	if err != nil {
		t.Fatal(err)
	}
	direct, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	nc.Flush()
	direct.Publish("fwd.test", []byte("through"))
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil || string(msg.Data) != "through" {
		t.Fatalf("message through the forwarder: %v, %v", msg, err)
	}
	nc.Close()

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("forward returned %v after cancel", err)
	}
	if _, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		t.Fatal("listener still accepts after cancel")
	}
}

// TestForwarderDialsAhead: after prepare, the first workload connection
// gets the connection already made to the node's NATS (a real server with
// users, as the node's is) and logs in over it, while any other dial would
// hang; a spare nobody takes is closed after the forwarder's ttl, and the
// next connection dials anew; a spare whose dial failed is dialled again.
func TestForwarderDialsAhead(t *testing.T) {
	s := natsServer(t, []*server.User{{Username: "wl", Password: "secret"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dials atomic.Int32
	var hang, fail atomic.Bool
	release := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	f := newForwarder(ctx, func(ctx context.Context) (net.Conn, error) {
		dials.Add(1)
		if fail.Swap(false) {
			return nil, errors.New("no way to the node")
		}
		if hang.Load() {
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", s.Addr().String())
	}, testLog(t))
	done := make(chan error, 1)
	go func() { done <- f.serve(ln) }()
	defer func() {
		close(release)
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	// count waits until get, a count the server keeps, is want.
	count := func(what string, want int, get func() int) {
		t.Helper()
		got := get()
		for deadline := time.Now().Add(5 * time.Second); got != want && time.Now().Before(deadline); got = get() {
			time.Sleep(5 * time.Millisecond)
		}
		if got != want {
			t.Fatalf("the server has %d %s; want %d", got, what, want)
		}
	}
	clients := func(want int) { t.Helper(); count("clients", want, s.NumClients) }
	// total counts every connection the server has seen, so a spare that
	// came and went is counted however briefly it lived.
	total := func(want int) {
		t.Helper()
		count("connections seen", want, func() int {
			vz, err := s.Varz(nil)
			if err != nil {
				t.Fatal(err)
			}
			return int(vz.TotalConnections)
		})
	}
	connect := func() *nats.Conn {
		t.Helper()
		nc, err := nats.Connect("nats://"+ln.Addr().String(), nats.UserInfo("wl", "secret"), nats.Timeout(5*time.Second))
		if err != nil {
			t.Fatalf("connect through the forwarder: %v", err)
		}
		if _, err := nc.Request("none.here", nil, time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("a request over it: %v; want no responders from the server", err)
		}
		return nc
	}

	f.ttl = time.Minute // long enough for a busy machine to connect in
	f.prepare()
	f.prepare() // one spare at a time
	clients(1)
	hang.Store(true)
	nc := connect()
	defer nc.Close()
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d dials for one prepared connection", n)
	}
	hang.Store(false)

	f.ttl = 50 * time.Millisecond
	f.prepare()
	total(2)   // the spare reached the server (a count that only grows)
	clients(1) // and was closed unused
	nc2 := connect()
	defer nc2.Close()
	if n := dials.Load(); n != 3 {
		t.Fatalf("%d dials; want 3 (a spare, a spare that expired, a new one)", n)
	}

	fail.Store(true)
	f.prepare()
	nc3 := connect()
	defer nc3.Close()
	if n := dials.Load(); n != 5 {
		t.Fatalf("%d dials; want 5 (the failed spare, then a new one)", n)
	}
}

// hangup returns EOF a few times (host not connected) before its data.
type hangup struct {
	eofs int
	data io.Reader
}

func (h *hangup) Read(p []byte) (int, error) {
	if h.eofs > 0 {
		h.eofs--
		return 0, io.EOF
	}
	return h.data.Read(p)
}

func TestEOFRetry(t *testing.T) {
	r := eofRetry{context.Background(), &hangup{eofs: 3, data: strings.NewReader("late\n")}}
	line, err := bufio.NewReader(r).ReadString('\n')
	if err != nil || line != "late\n" {
		t.Fatalf("read %q, %v", line, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := io.ReadAll(eofRetry{ctx, &hangup{eofs: 1 << 30}}); err != nil {
		t.Fatalf("a port whose host never comes: %v, want a plain EOF once ctx ends", err)
	}
}

// TestRehearseForward: the rehearsal's connection through the forwarder
// reaches the node's NATS (a real server, with users, as the node's is),
// reads its INFO and leaves without logging in; a server that does not
// speak NATS fails the rehearsal, and so does an ended context.
func TestRehearseForward(t *testing.T) {
	s := natsServer(t, []*server.User{{Username: "wl", Password: "secret"}})
	fwd := func(target string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			var d net.Dialer
			done <- newForwarder(ctx, func(ctx context.Context) (net.Conn, error) { return d.DialContext(ctx, "tcp", target) }, testLog(t)).serve(ln)
		}()
		t.Cleanup(func() { cancel(); <-done })
		return ln.Addr().String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := rehearseForward(ctx, fwd(s.Addr().String())); err != nil {
		t.Fatalf("rehearse through the forwarder to NATS: %v", err)
	}
	vz, err := s.Varz(nil)
	if err != nil {
		t.Fatal(err)
	}
	if vz.TotalConnections != 1 {
		t.Errorf("the server saw %d connections; want the rehearsal's one", vz.TotalConnections)
	}
	for deadline := time.Now().Add(5 * time.Second); s.NumClients() > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.NumClients(); n != 0 {
		t.Errorf("%d clients still connected after the rehearsal", n)
	}

	other, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("-ERR 'not nats'\r\n"))
			c.Close()
		}
	}()
	err = rehearseForward(ctx, fwd(other.Addr().String()))
	if err == nil || !strings.Contains(err.Error(), "not INFO") {
		t.Errorf("rehearse to a server that is not NATS: %v; want a refusal", err)
	}

	ended, stop := context.WithCancel(context.Background())
	stop()
	if err := rehearseForward(ended, fwd(s.Addr().String())); err == nil {
		t.Error("rehearsal with an ended context succeeded")
	}
}
