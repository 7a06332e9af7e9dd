package cli

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"
	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/api"
)

// ccFollow runs a following command (logs, events) with --count while
// publish keeps sending until the command has had enough and returned: the
// command subscribes at an unknown moment, so early messages may be missed
// by design, and the loop stops by itself after a bound.
func ccFollow(t *testing.T, url string, publish func(nc *nats.Conn), args ...string) (int, string, string) {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	type result struct {
		code     int
		out, err string
	}
	done := make(chan result, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		code, out, errOut := ccRun(t, ctx, args...)
		done <- result{code, out, errOut}
	}()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if ctx.Err() != nil {
				t.Fatalf("%v did not end by itself: %s", args, r.out)
			}
			return r.code, r.out, r.err
		case <-tick.C:
			publish(nc)
		}
	}
}

func TestLogsFollowsFilteredLines(t *testing.T) {
	url := ccServer(t)
	ts := time.Date(2025, 1, 2, 3, 4, 5, 0, time.Local)
	publish := func(nc *nats.Conn) {
		for _, l := range []struct{ node, id, name, text string }{
			{"NODEAAAAAAAAAAAA", "w1", "echo", "hello\n"},
			{"NODEAAAAAAAAAAAA", "w2", "other", "not me"},
		} {
			b, _ := json.Marshal(api.LogEntry{Namespace: "default", NodeID: l.node, WorkloadID: l.id, Timestamp: ts, Text: l.text})
			nc.Publish(api.LogSubject("default", l.node, l.id, l.name), b)
		}
	}
	code, out, errOut := ccFollow(t, url, publish, "logs", "--name", "echo", "--count", "2", "-s", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] != "03:04:05.000 NODEAAAAAA w1 echo: hello" {
		t.Fatalf("logs output:\n%s", out)
	}

	code, out, errOut = ccFollow(t, url, publish, "logs", "--workload", "w2", "--count", "1", "--json", "-s", url)
	var got logJSON
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || got.Name != "other" || got.Text != "not me" {
		t.Fatalf("logs --json: exit %d, %q, %s", code, out, errOut)
	}
}

func TestEventsFollowsNamespaceAndSystem(t *testing.T) {
	url := ccServer(t)
	publish := func(nc *nats.Conn) {
		for _, e := range []struct {
			ns, typ string
			data    any
		}{
			{"other", api.EventWorkloadDeployed, api.WorkloadDeployedEvent{WorkloadName: "nope"}},
			{"default", api.EventWorkloadDeployed, api.WorkloadDeployedEvent{WorkloadName: "echo", TotalBytes: 42}},
			{api.SystemNamespace, api.EventNodeStarted, api.NodeStartedEvent{Version: "1.0", ID: "NODEAAAAAAAAAAAA"}},
		} {
			raw, _ := json.Marshal(e.data)
			b, _ := json.Marshal(api.CloudEvent{SpecVersion: "1.0", ID: "x", Source: "NODEAAAAAAAAAAAA", Type: e.typ,
				Time: time.Now(), DataContentType: "application/json", Data: raw, Namespace: e.ns})
			nc.Publish(api.EventSubject(e.ns, e.typ), b)
		}
	}
	code, out, errOut := ccFollow(t, url, publish, "events", "--count", "4", "-s", url)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.Contains(out, "nope") ||
		!strings.Contains(out, " default NODEAAAAAA workload_deployed total_bytes=42 workload_name=echo\n") ||
		!strings.Contains(out, " system NODEAAAAAA node_started id=NODEAAAAAAAAAAAA version=1.0\n") {
		t.Fatalf("events output:\n%s", out)
	}

	code, out, errOut = ccFollow(t, url, publish, "events", "--no-system", "--type", api.EventNodeStarted,
		"--namespace", "*", "--count", "1", "--json", "-s", url)
	var ev api.CloudEvent
	if code != 0 || json.Unmarshal([]byte(out), &ev) != nil || ev.Type != api.EventNodeStarted || ev.Namespace != api.SystemNamespace {
		t.Fatalf("events --json: exit %d, %q, %s", code, out, errOut)
	}
}

func TestFlattenEventData(t *testing.T) {
	for in, want := range map[string]string{
		`{"b":1,"a":"x y","c":{"k":[1, 2]},"d":""}`: ` a="x y" b=1 c={"k":[1,2]} d=""`,
		``:     ``,
		`null`: ``,
		`[1]`:  ` [1]`,
	} {
		if got := flatten(json.RawMessage(in)); got != want {
			t.Errorf("flatten(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestCompletion(t *testing.T) {
	var root Root
	var out strings.Builder
	root.stdout, root.stderr = &out, &out
	parser, err := kong.New(&root, kong.Name("nex"), kong.Writers(&out, &out), kong.Exit(func(int) {}))
	if err != nil {
		t.Fatal(err)
	}
	if Complete(parser) {
		t.Fatal("Complete answered without COMP_LINE")
	}
	t.Setenv("COMP_LINE", "nex node l")
	t.Setenv("COMP_POINT", "10")
	if !Complete(parser) {
		t.Fatal("Complete did not answer a completion request")
	}
	if got := strings.Fields(out.String()); len(got) != 2 || got[0] != "lameduck" && got[1] != "lameduck" || !strings.Contains(out.String(), "ls") {
		t.Fatalf("candidates for 'nex node l' = %q, want ls and lameduck", got)
	}
	out.Reset()
	t.Setenv("COMP_LINE", "nex devrun --ty")
	t.Setenv("COMP_POINT", "15")
	Complete(parser)
	if strings.TrimSpace(out.String()) != "--type" {
		t.Fatalf("candidates for 'nex devrun --ty' = %q", out.String())
	}
	if strings.Contains(completionOf(t, parser, "nex a"), "agent") {
		t.Fatal("hidden agent command offered")
	}

	var c CompletionCmd
	for _, sh := range []string{"bash", "zsh", "fish"} {
		c.Shell = sh
		out.Reset()
		if err := c.Run(&root.Globals, &kong.Context{Kong: parser}); err != nil {
			t.Fatal(err)
		}
		self, _ := os.Executable()
		if !strings.Contains(out.String(), self) || !strings.Contains(out.String(), "nex") {
			t.Errorf("%s setup does not name %s:\n%s", sh, self, out.String())
		}
	}
	c.Shell = ""
	t.Setenv("SHELL", "/bin/tcsh")
	if err := c.Run(&root.Globals, &kong.Context{Kong: parser}); err == nil || !strings.Contains(err.Error(), "bash, zsh and fish") {
		t.Fatalf("unsupported shell: %v", err)
	}
}

func completionOf(t *testing.T, parser *kong.Kong, line string) string {
	t.Helper()
	var out strings.Builder
	parser.Stdout = &out
	t.Setenv("COMP_LINE", line)
	t.Setenv("COMP_POINT", "")
	Complete(parser)
	return out.String()
}
