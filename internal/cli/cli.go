// Package cli is nex's command line: one file per command, each parsing its
// own flags through kong and returning an error; only Main turns errors into
// exit codes.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/alecthomas/kong"
)

// Version is set at build time with -ldflags "-X …/cli.Version=…".
var Version = "0.1.0-dev"

// Globals are the flags every command takes, shaped like the nats and Nex CLIs.
type Globals struct {
	Server    string   `short:"s" name:"server" env:"NATS_URL" help:"NATS server URL(s)" placeholder:"URL"`
	Creds     string   `name:"creds" env:"NATS_CREDS" help:"user credentials file" type:"path"`
	Nkey      string   `name:"nkey" env:"NATS_NKEY" help:"user nkey seed file" type:"path"`
	User      string   `name:"user" env:"NATS_USER" help:"username or token"`
	Password  string   `name:"password" env:"NATS_PASSWORD" help:"password"`
	TLSCert   string   `name:"tlscert" help:"client TLS certificate" type:"path"`
	TLSKey    string   `name:"tlskey" help:"client TLS key" type:"path"`
	TLSCA     string   `name:"tlsca" help:"CA to verify the server" type:"path"`
	Timeout   Duration `name:"timeout" default:"5s" help:"time to wait for requests and connections"`
	Namespace string   `name:"namespace" default:"default" help:"workload namespace"`
	LogJSON   bool     `name:"logjson" help:"log as JSON"`
	LogLevel  string   `name:"loglevel" default:"info" enum:"debug,info,warn,error" help:"log level"`

	stdout, stderr io.Writer
	log            *slog.Logger
}

// Root is the whole command tree.
type Root struct {
	Globals

	Node       NodeCmd       `cmd:"" help:"run and inspect nex nodes"`
	Devrun     DevrunCmd     `cmd:"" help:"upload a file and run it on a node (developer mode)"`
	Run        RunCmd        `cmd:"" help:"run a workload from an object store location"`
	Stop       StopCmd       `cmd:"" help:"stop a running workload"`
	Logs       LogsCmd       `cmd:"" help:"follow workload logs"`
	Events     EventsCmd     `cmd:"" help:"follow node and workload events"`
	Agent      AgentCmd      `cmd:"" hidden:"" help:"run as a sandbox agent (started by the node)"`
	Rootfs     RootfsCmd     `cmd:"" help:"build the microVM guest image"`
	Completion CompletionCmd `cmd:"" help:"print shell code that enables tab completion (source <(nex completion bash))"`
	Version    VersionCmd    `cmd:"" help:"print the version"`

	// VMForward is run by QEMU for each guest connection to the node's NATS.
	VMForward VMForwardCmd `cmd:"" name:"vm-forward" hidden:"" help:"splice stdin/stdout to the node's NATS (run by QEMU per guest connection)"`
}

// NodeCmd groups node commands.
type NodeCmd struct {
	Up        NodeUpCmd        `cmd:"" help:"start a node"`
	Ls        NodeLsCmd        `cmd:"" help:"list nodes"`
	Info      NodeInfoCmd      `cmd:"" help:"show one node"`
	Lameduck  NodeLameduckCmd  `cmd:"" help:"put a node in lame-duck mode"`
	Preflight NodePreflightCmd `cmd:"" help:"check (and with --yes fix) what a node needs"`
}

// VersionCmd prints the version.
type VersionCmd struct{}

func (VersionCmd) Run(g *Globals) error {
	_, err := fmt.Fprintln(g.stdout, "nex", Version)
	return err
}

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var root Root
	root.stdout, root.stderr = stdout, stderr
	// kong calls Exit after --help (and on parse errors); remember it
	// instead of exiting, so Main stays testable and never runs the command.
	exited, exitCode := false, 0
	parser, err := kong.New(&root,
		kong.Name("nex"),
		kong.Description("NATS Execution Engine: run services, functions and jobs on a fleet over NATS."),
		kong.UsageOnError(),
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { exited, exitCode = true, code }),
		kong.BindTo(ctx, (*context.Context)(nil)),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
	)
	if err != nil {
		fmt.Fprintln(stderr, "nex:", err)
		return 2
	}
	if Complete(parser) {
		return 0
	}
	kctx, err := parser.Parse(args)
	if exited {
		return exitCode
	}
	if err != nil {
		fmt.Fprintln(stderr, "nex:", err)
		return 2
	}
	root.log = newLogger(stderr, root.LogJSON, root.LogLevel)
	kctx.Bind(&root.Globals)
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(stderr, "nex:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

func newLogger(w io.Writer, json bool, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if json {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Stdout and Stderr are the command's output streams.
func (g *Globals) Stdout() io.Writer { return g.stdout }
func (g *Globals) Stderr() io.Writer { return g.stderr }

// Log is the command's logger.
func (g *Globals) Log() *slog.Logger {
	if g.log == nil {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return g.log
}
