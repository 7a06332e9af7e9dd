package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/alecthomas/kong"
	kongcompletion "github.com/jotaen/kong-completion"
)

// Shell completion works the way of posener/complete (which kong-completion
// drives from kong's model): the shell runs `nex` itself with COMP_LINE and
// COMP_POINT set, and nex prints the candidates instead of running a command.

// CompletionCmd prints the shell code that enables completion for nex:
//
//	source <(nex completion bash)
type CompletionCmd struct {
	Shell string `arg:"" optional:"" enum:"bash,zsh,fish," default:"" help:"bash, zsh or fish (default: from $SHELL)"`
}

// completionSetup is each shell's setup; %[1]s is the path of nex, %[2]s its
// name as typed.
var completionSetup = map[string]string{
	"bash": "complete -o default -o bashdefault -C %[1]q %[2]s\n",
	"zsh":  "autoload -U +X bashcompinit && bashcompinit\ncomplete -o default -o bashdefault -C %[1]q %[2]s\n",
	"fish": `function __complete_%[2]s
    set -lx COMP_LINE (commandline -cp)
    test -z (commandline -ct)
    and set COMP_LINE "$COMP_LINE "
    %[1]q
end
complete -f -c %[2]s -a "(__complete_%[2]s)"
`,
}

func (c *CompletionCmd) Run(g *Globals, k *kong.Context) error {
	shell := c.Shell
	if shell == "" {
		shell = filepath.Base(os.Getenv("SHELL"))
	}
	setup, ok := completionSetup[shell]
	if !ok {
		return fmt.Errorf("shell %q: completion is available for bash, zsh and fish (name one: `nex completion bash`)", shell)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the nex executable: %w", err)
	}
	if abs, err := filepath.Abs(self); err == nil {
		self = abs
	}
	_, err = fmt.Fprintf(g.Stdout(), setup, self, k.Model.Name)
	return err
}

// Complete answers a shell's completion request when COMP_LINE is set,
// writing candidates to the parser's stdout, and reports whether it did (the
// caller then exits 0 without parsing arguments).
func Complete(parser *kong.Kong) bool {
	if os.Getenv("COMP_LINE") == "" {
		return false
	}
	done := false
	kongcompletion.Register(parser, kongcompletion.WithExitFunc(func(int) { done = true }))
	return done
}
