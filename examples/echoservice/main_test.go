package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/nex-engine/nex/internal/natsd"
)

func startServer(t *testing.T) string {
	t.Helper()
	cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cp.Shutdown)
	return cp.ClientURL()
}

// syncBuffer is a log the service writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestEchoAndCleanStop(t *testing.T) {
	url := startServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	var log syncBuffer
	go func() { done <- run(ctx, url, &log, ready) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("service ended before ready: %v", err)
	}

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, body := range []string{"hello", "", strings.Repeat("x", 64<<10)} {
		msg, err := nc.Request(EchoSubject, []byte(body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(msg.Data) != body {
			t.Fatalf("echo of %d bytes came back as %d bytes", len(body), len(msg.Data))
		}
	}
	// It is a proper micro service: discoverable by name.
	msg, err := nc.Request("$SRV.INFO."+ServiceName, nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info micro.Info
	if err := json.Unmarshal(msg.Data, &info); err != nil || info.Name != ServiceName || len(info.Endpoints) != 1 ||
		info.Endpoints[0].Subject != EchoSubject {
		t.Fatalf("service info = %+v (%v)", info, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("stop: %v", err)
	}
	if out := log.String(); !strings.Contains(out, "serving svc.echo on") || !strings.Contains(out, "stopping") {
		t.Fatalf("log = %q", out)
	}
	if _, err := nc.Request(EchoSubject, []byte("x"), time.Second); err == nil {
		t.Fatal("the service still answers after stopping")
	}
}

// TestBinaryStopsOnSIGTERM builds the static binary and runs it as a node
// would: NATS_URL in the environment, SIGTERM to stop.
func TestBinaryStopsOnSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary; skipped with -short")
	}
	url := startServer(t)
	bin := filepath.Join(t.TempDir(), "echoservice")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var log syncBuffer
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "NATS_URL="+url)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })

	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// Poll until the service answers (it starts at its own pace).
	deadline := time.Now().Add(20 * time.Second)
	for {
		msg, err := nc.Request(EchoSubject, []byte("ping"), 200*time.Millisecond)
		if err == nil && string(msg.Data) == "ping" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("service never answered: %v; log %q", err, log.String())
		}
		time.Sleep(50 * time.Millisecond) // poll interval, not a timing assertion
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v; log %q", err, log.String())
	}
	if !strings.Contains(log.String(), "stopping") {
		t.Fatalf("log = %q", log.String())
	}
}
