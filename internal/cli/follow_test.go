package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/alecthomas/kong"

	"github.com/nex-engine/nex/api"
	"github.com/nex-engine/nex/internal/controlclient"
)

func TestLogsFollowsFilteredLines(t *testing.T) {
	devHome(t)
	p := startPlane(t)
	n := p.startNode()
	bin := workloadFile(t, "workload")

	// An essential job that keeps logging, to be filtered out and then
	// followed by id.
	other := p.deploy("devrun", bin, "--name", "other", "--essential", "--argv", "exit", "--argv", "0")

	// Lines of one workload by name and node, from the moment the command
	// subscribed.
	f := p.follow(controlclient.LogFilter{Namespace: api.DefaultNamespace, Node: n.ID(), Name: "chatty"}.Subjects(),
		"logs", "--name", "chatty", "--node", n.ID()[:8])
	chatty := p.deploy("devrun", bin, "--name", "chatty", "GREETING=hi", "--argv", "exit", "--argv", "3")
	f.waitFor(" chatty: hello stdout\n", " chatty: hello stderr\n", " chatty: env GREETING=hi\n")
	code, out, errOut := f.stop()
	if code != 0 {
		t.Fatalf("logs: exit %d: %s", code, errOut)
	}
	line := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} ` + regexp.QuoteMeta(shortID(n.ID())+" "+chatty.ID) + ` chatty: `)
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !line.MatchString(l) {
			t.Errorf("logs --name chatty printed %q, want lines matching %s", l, line)
		}
	}

	// --workload with --json; the command ends by itself after --count lines.
	code, out, errOut = p.follow(nil, "logs", "--workload", other.ID, "--count", "2", "--json").wait()
	if code != 0 {
		t.Fatalf("logs --json: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("logs --count 2 printed %d lines:\n%s", len(lines), out)
	}
	for _, l := range lines {
		var got logJSON
		if err := json.Unmarshal([]byte(l), &got); err != nil || got.Name != "other" || got.WorkloadID != other.ID ||
			got.NodeID != n.ID() || got.Namespace != api.DefaultNamespace || got.Timestamp.IsZero() {
			t.Errorf("logs --json line %q (%v)", l, err)
		}
	}
}

func TestEventsFollowsNamespaceAndSystem(t *testing.T) {
	devHome(t)
	p := startPlane(t)
	n := p.startNode(withHeartbeat(50 * time.Millisecond))
	bin := workloadFile(t, "workload")
	st, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	short := shortID(n.ID())

	// The default namespace and node events, not other namespaces.
	f := p.follow([]string{controlclient.EventFilter{Namespace: api.DefaultNamespace}.Subject(),
		controlclient.EventFilter{Namespace: api.SystemNamespace}.Subject()}, "events")
	p.deploy("devrun", bin, "--name", "nope", "--namespace", "other", "--argv", "exit", "--argv", "0")
	job := p.deploy("devrun", bin, "--name", "job", "--argv", "exit", "--argv", "0")
	p.mustRun("node", "lameduck", n.ID())
	f.waitFor(
		fmt.Sprintf(" default %s workload_deployed total_bytes=%d workload_id=%s workload_name=job\n", short, st.Size(), job.ID),
		fmt.Sprintf(" default %s workload_undeployed code=0 ", short),
		fmt.Sprintf(" system %s %s id=%s version=%s\n", short, api.EventLameDuckEntered, n.ID(), testVersion),
		fmt.Sprintf(" system %s heartbeat ", short),
	)
	code, out, errOut := f.stop()
	if code != 0 {
		t.Fatalf("events: exit %d: %s", code, errOut)
	}
	// nope's workload_deployed went out before job's, on the same connection,
	// so it would be here by now.
	if strings.Contains(out, "nope") || strings.Contains(out, " other ") {
		t.Fatalf("events of namespace other shown:\n%s", out)
	}

	// Every namespace, one type, as JSON; it ends by itself after --count.
	code, out, errOut = p.follow(nil, "events", "--no-system", "--type", api.EventHeartbeat,
		"--namespace", "*", "--count", "2", "--json").wait()
	if code != 0 {
		t.Fatalf("events --json: exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("events --count 2 printed %d lines:\n%s", len(lines), out)
	}
	for _, l := range lines {
		var ev api.CloudEvent
		var hb api.HeartbeatEvent
		if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Type != api.EventHeartbeat ||
			ev.Namespace != api.SystemNamespace || ev.Source != n.ID() ||
			json.Unmarshal(ev.Data, &hb) != nil || hb.NodeID != n.ID() || hb.Tags[api.TagLameDuck] != "true" {
			t.Errorf("events --json line %q (%v)", l, err)
		}
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
