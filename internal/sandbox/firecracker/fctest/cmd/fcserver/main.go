// Command fcserver is package fctest's Firecracker stand-in as a program:
// run in place of the firecracker binary, it takes --api-sock like
// Firecracker, serves the API there, and boots the machine with QEMU on
// InstanceStart (or with nothing: --boot none). It exits when the machine
// ends, with status 0 when the guest ended it, as Firecracker does. The
// guest's serial console goes to stdout; its own log and QEMU's messages to
// stderr; every request it answered, as JSON lines, to --record (default
// fctest-api.log beside the API socket).
//
// It exists for tests: see package fctest for what it does and does not
// stand for.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/nex-engine/nex/internal/sandbox/firecracker/fctest"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

func main() {
	fs := flag.NewFlagSet("fcserver", flag.ContinueOnError)
	sock := fs.String("api-sock", "", "path of the API unix socket (required)")
	id := fs.String("id", "", "instance id, as Firecracker's --id")
	version := fs.Bool("version", false, "print the version and exit")
	boot := fs.String("boot", "qemu", "what InstanceStart boots: qemu, or none (API-only tests)")
	qemuBin := fs.String("qemu", qemu.DefaultBinary, "QEMU executable")
	nex := fs.String("nex", "", "nex executable whose vm-forward carries the guest's vsock connections")
	record := fs.String("record", "", "file that gets each answered request as a JSON line (default "+fctest.RecordFile+" beside the API socket)")
	debug := fs.Bool("debug", false, "log every request")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if *version {
		fmt.Println("Firecracker v" + fctest.Version + " (nex fctest stand-in; boots QEMU)")
		return
	}
	if *sock == "" {
		fmt.Fprintln(os.Stderr, "fcserver: --api-sock is required")
		os.Exit(2)
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).With("fctest", *id)
	if err := run(*sock, *id, *boot, *qemuBin, *nex, *record, log); err != nil {
		log.Error("fcserver", "error", err)
		os.Exit(1)
	}
}

func run(sock, id, boot, qemuBin, nex, record string, log *slog.Logger) error {
	if record == "" {
		record = filepath.Join(filepath.Dir(sock), fctest.RecordFile)
	}
	rec, err := os.OpenFile(record, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer rec.Close()
	o := fctest.Options{ID: id, Record: rec, Log: log}
	switch boot {
	case "none":
	case "qemu":
		q := fctest.QEMU{Binary: qemuBin, Console: os.Stdout, Stderr: os.Stderr, Log: log}
		if nex != "" {
			q.Forwarder = []string{nex, qemu.ForwardSubcommand}
		}
		o.Booter = q
	default:
		return fmt.Errorf("--boot %q: want qemu or none", boot)
	}
	return fctest.New(o).Serve(sock)
}
