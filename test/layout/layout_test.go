// Package layout keeps the source tree honest: every package says what it is
// in exactly one doc comment, and the import graph points the way the
// architecture does (wire types depend on nothing of ours, drivers and the
// agent never reach into the node).
package layout

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Dir        string
	Doc        string
	GoFiles    []string
	Imports    []string
	Deps       []string
}

func packages(t *testing.T) []pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", "github.com/nex-engine/nex/...").Output()
	if err != nil {
		t.Fatal(err)
	}
	var ps []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

const mod = "github.com/nex-engine/nex/"

func TestEveryPackageHasOneDocComment(t *testing.T) {
	for _, p := range packages(t) {
		if len(p.GoFiles) == 0 {
			continue
		}
		docs := 0
		for _, f := range p.GoFiles {
			out, _ := exec.Command("grep", "-c", "-E", "^// (Package|Command) ", p.Dir+"/"+f).Output()
			if strings.TrimSpace(string(out)) != "0" && len(out) > 0 {
				docs++
			}
		}
		if docs != 1 {
			t.Errorf("%s: %d files carry a package doc comment, want exactly 1", p.ImportPath, docs)
		}
	}
}

func TestImportGraph(t *testing.T) {
	rules := []struct {
		pkg       string // prefix
		forbidden []string
		why       string
	}{
		{"api", []string{mod + "internal/"}, "wire types are the contract; they depend on nothing of ours"},
		{"internal/agentapi", []string{mod + "internal/node", mod + "internal/agent"}, "the contract sits below both sides"},
		{"internal/sandbox", []string{mod + "internal/node", mod + "internal/controlapi", mod + "internal/cli"}, "drivers are plugged into the node, not the other way round"},
		{"internal/agent", []string{mod + "internal/node", mod + "internal/controlapi", mod + "internal/cli", "github.com/nats-io/nats-server/v2/server"}, "the agent runs in sandboxes and knows only the agent contract"},
		{"internal/workload", []string{mod + "internal/node", mod + "internal/agent"}, "runtimes are used by the agent"},
		{"internal/pool", []string{mod + "internal/"}, "the pool is generic"},
	}
	for _, p := range packages(t) {
		rel := strings.TrimPrefix(p.ImportPath, mod)
		for _, r := range rules {
			if rel != r.pkg && !strings.HasPrefix(rel, r.pkg+"/") {
				continue
			}
			if strings.HasSuffix(rel, "test") || strings.Contains(rel, "/fctest") || strings.Contains(rel, "sandboxtest") {
				continue // test harnesses may play the other side
			}
			for _, imp := range p.Imports {
				for _, f := range r.forbidden {
					if imp == f || strings.HasPrefix(imp, f) {
						t.Errorf("%s imports %s: %s", rel, imp, r.why)
					}
				}
			}
		}
	}
}
