package agent_test

import (
	"net"
	"net/url"
	"sync"
	"testing"

	"github.com/nex-engine/nex/internal/agent"
	"github.com/nex-engine/nex/internal/sandbox/sandboxtest"
)

// tcpDialer reaches the node over TCP whatever address it is asked for,
// standing in for the vsock dialer of a Firecracker guest (no vsock here).
type tcpDialer struct {
	to    string
	mu    sync.Mutex
	asked []string
}

func (d *tcpDialer) Dial(network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.asked = append(d.asked, network+" "+addr)
	d.mu.Unlock()
	return net.Dial("tcp", d.to)
}

// TestRunWithDialer: with Options.Dialer the agent connects through it, to a
// URL whose host is no name at all (a vsock URL), and works as usual.
func TestRunWithDialer(t *testing.T) {
	h := sandboxtest.NewHarness(t)
	a := h.AddAgent("dialer1")
	u, err := url.Parse(a.Meta.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	d := &tcpDialer{to: u.Host}
	meta := a.Meta
	meta.NATSURL = "vsock://2:4222"
	ctx := testCtx(t)
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, agent.Options{Meta: meta, Dialer: d, WorkDir: t.TempDir()}) }()
	if _, err := a.WaitHandshake(ctx); err != nil {
		t.Fatal(err)
	}
	if r, err := a.Ping(ctx); err != nil || !r.OK {
		t.Fatalf("ping = %+v, %v", r, err)
	}
	if r, err := a.Undeploy(ctx, "test done"); err != nil || !r.OK {
		t.Fatalf("undeploy = %+v, %v", r, err)
	}
	if err := waitRun(t, done); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.asked) == 0 || d.asked[0] != "tcp 2:4222" {
		t.Fatalf("dialer asked for %q; want the vsock URL's host:port, unresolved", d.asked)
	}
}
