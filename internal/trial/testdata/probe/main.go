// Command probe is the trial package's test program. Run as "probe" (its
// file's name) with the arguments "--flag" and "two words", it checks the
// jail of a trial start from inside and exits with 0 when every check
// holds, else with the number of the first that failed, after starting a
// child of its own that sleeps on (the PID namespace must end it). Run as
// "hang" it starts the same child, then sleeps until killed. Its child is
// itself with the argument "sleep".
package main

import (
	"bufio"
	"errors"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sleep" {
		time.Sleep(time.Hour)
		return
	}
	child := exec.Command(os.Args[0], "sleep")
	// The jail has no /dev/null for os/exec to open: the child gets the
	// probe's own (the trial's), open already.
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := child.Start(); err != nil {
		os.Exit(20)
	}
	if filepath.Base(os.Args[0]) == "hang" {
		time.Sleep(time.Hour)
	}
	os.Exit(check())
}

func check() int {
	switch {
	case len(os.Args) != 3 || os.Args[1] != "--flag" || os.Args[2] != "two words":
		return 9
	case os.Getuid() != 65534 || os.Getgid() != 65534:
		return 10
	case os.Getpid() != 1: // the init of a PID namespace of its own
		return 11
	}
	if f, err := os.Create("/x"); err == nil || !errors.Is(err, fs.ErrPermission) {
		f.Close()
		return 12
	}
	if _, err := os.ReadDir("/"); !errors.Is(err, fs.ErrPermission) {
		return 13
	}
	if _, err := os.Stat("/tmp"); !errors.Is(err, fs.ErrNotExist) {
		return 14
	}
	// A network of its own: a loopback, up, and nothing else.
	ifs, err := net.Interfaces()
	if err != nil || len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
		return 15
	}
	// Its NATS URL is the trial's server, on that loopback.
	url := os.Getenv("NATS_URL")
	if len(os.Environ()) != 1 || !strings.HasSuffix(url, "@127.0.0.1:4222") {
		return 16
	}
	c, err := net.DialTimeout("tcp", "127.0.0.1:4222", 5*time.Second)
	if err != nil {
		return 17
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || !strings.HasPrefix(line, "INFO ") || !strings.Contains(line, `"server_id":"nex-trial"`) {
		return 18
	}
	if c, err := net.DialTimeout("tcp", "127.0.0.1:4223", time.Second); err == nil {
		c.Close()
		return 19
	}
	// The server sends a subscription one request and takes its reply.
	nc, err := nats.Connect(url)
	if err != nil {
		return 21
	}
	got := make(chan struct{}, 1)
	if _, err := nc.Subscribe("svc.probe.*", func(m *nats.Msg) {
		m.Respond([]byte("probed"))
		got <- struct{}{}
	}); err != nil {
		return 22
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		return 23
	}
	if err := nc.Flush(); err != nil {
		return 24
	}
	nc.Close()
	return 0
}
