package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestHelpDoesNotRunTheCommand(t *testing.T) {
	var out, errb bytes.Buffer
	// node up would start a node (and an embedded NATS) if help ran it.
	code := Main(context.Background(), []string{"node", "up", "--help"}, &out, &errb)
	if code != 0 || !strings.Contains(out.String(), "Usage: nex node up") {
		t.Fatalf("code %d\nstdout %s\nstderr %s", code, out.String(), errb.String())
	}
	if strings.Contains(errb.String(), "Established") {
		t.Fatal("node up ran after --help")
	}
}

func TestUnknownCommandExits2(t *testing.T) {
	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"bogus"}, &out, &errb); code != 2 {
		t.Fatalf("code %d", code)
	}
}
