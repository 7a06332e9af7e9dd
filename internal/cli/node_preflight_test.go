package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestNodePreflight(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		code     int
		contains []string
	}{
		{"process sandbox is always ready", []string{"--sandbox", "process"}, 0,
			[]string{"✔ free disk", "✔ state dir", "ready: nex node up --sandbox process will start"}},
		{"qemu without a guest image fails with the fix", []string{"--sandbox", "qemu"}, 1,
			[]string{"✘ guest kernel", "fix: nex rootfs build --data-dir", "run again with --yes"}},
		{"auto falls back to process", []string{"--sandbox", "auto"}, 0,
			[]string{"✘ guest kernel", "will use the process sandbox"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			args := append([]string{"node", "preflight", "--data-dir", t.TempDir()}, tt.args...)
			if code := Main(context.Background(), args, &out, &errb); code != tt.code {
				t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out.String(), errb.String())
			}
			for _, want := range tt.contains {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}
