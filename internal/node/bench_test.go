package node

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
	"github.com/nex-engine/nex/internal/natsd"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox/process"
)

// startNodes runs count nodes (empty pools) in this process on one server.
func startNodes(b *testing.B, cp *natsd.ControlPlane, count int) []*Node {
	nex, _ := binaries(b)
	var nodes []*Node
	for i := 0; i < count; i++ {
		nc, err := nats.Connect(cp.ClientURL())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(nc.Close)
		zero := 0
		cfg := &config.Config{DataDir: b.TempDir(), Sandbox: config.SandboxProcess, MachinePoolSize: &zero}
		cfg.ApplyDefaults()
		id, _ := NewIdentity("", "")
		drv, _ := process.New(process.Config{AgentBinary: nex})
		n, err := New(Options{Config: cfg, Identity: id, Control: nc, Driver: drv, Version: "bench", Log: quietLog()})
		if err != nil {
			b.Fatal(err)
		}
		if err := n.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = n.Stop(context.Background()) })
		nodes = append(nodes, n)
	}
	return nodes
}

// BenchmarkNodeLs reports `nex node ls` as a user runs it (a new process:
// connect, $NEX.PING, collect until the stall window, print), the client's
// collection alone, one $NEX.PING.<node> round trip, and a raw NATS
// request/reply on the same server for comparison.
func BenchmarkNodeLs(b *testing.B) {
	nex, _ := binaries(b)
	for _, count := range []int{1, 20} {
		cp, err := natsd.StartControlPlane(natsd.ControlPlaneOptions{Port: -1, StoreDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		nodes := startNodes(b, cp, count)
		nc, _ := nats.Connect(cp.ClientURL())
		client := controlclient.New(nc)
		// The raw responder has its own connection, as a node does.
		rnc, _ := nats.Connect(cp.ClientURL())
		raw, _ := rnc.Subscribe("bench.raw", func(m *nats.Msg) { _ = m.Respond([]byte("{}")) })
		_ = rnc.Flush()

		b.Run(fmt.Sprintf("nodes=%d/cli", count), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				out, err := exec.Command(nex, "node", "ls", "-s", cp.ClientURL()).CombinedOutput()
				if err != nil {
					b.Fatalf("%v: %s", err, out)
				}
			}
		})
		b.Run(fmt.Sprintf("nodes=%d/collect", count), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				got, err := client.Ping(context.Background())
				if err != nil || len(got) != count {
					b.Fatalf("%d replies: %v", len(got), err)
				}
			}
		})
		if count == 1 {
			subj := api.PingNodeSubject(nodes[0].ID())
			b.Run("ping_roundtrip", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := nc.Request(subj, nil, time.Second); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("raw_request_reply", func(b *testing.B) {
				for i := 0; i < b.N; i++ {
					if _, err := nc.Request("bench.raw", nil, time.Second); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		_ = raw.Unsubscribe()
		rnc.Close()
		nc.Close()
		for _, n := range nodes {
			_ = n.Stop(context.Background())
		}
		cp.Shutdown()
	}
}
