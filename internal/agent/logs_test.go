package agent

import (
	"strings"
	"testing"
)

func TestLineWriter(t *testing.T) {
	long := strings.Repeat("x", 2*maxLogLine+10)
	// A multi-byte character straddling the cut must not be split.
	utf := strings.Repeat("a", maxLogLine-1) + "é" + "b"
	cases := []struct {
		name   string
		writes []string
		want   []string
	}{
		{"lines", []string{"one\ntwo\n"}, []string{"one", "two"}},
		{"split writes", []string{"o", "ne\nt", "wo\n"}, []string{"one", "two"}},
		{"empty line kept", []string{"a\n\nb\n"}, []string{"a", "", "b"}},
		{"crlf", []string{"dos\r\n"}, []string{"dos"}},
		{"unterminated tail on flush", []string{"a\nrest"}, []string{"a", "rest"}},
		{"long line in pieces", []string{long + "\n"}, []string{long[:maxLogLine], long[maxLogLine : 2*maxLogLine], long[2*maxLogLine:]}},
		{"exactly max", []string{strings.Repeat("y", maxLogLine) + "\n"}, []string{strings.Repeat("y", maxLogLine)}},
		{"utf-8 boundary", []string{utf + "\n"}, []string{strings.Repeat("a", maxLogLine-1), "éb"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			w := newLineWriter("stdout", func(stream, text string) {
				if stream != "stdout" {
					t.Errorf("stream %q", stream)
				}
				got = append(got, text)
			})
			for _, s := range c.writes {
				if n, err := w.Write([]byte(s)); n != len(s) || err != nil {
					t.Fatalf("Write = %d, %v", n, err)
				}
			}
			w.Flush()
			w.Flush() // nothing left: no empty line
			if strings.Join(got, "|") != strings.Join(c.want, "|") || len(got) != len(c.want) {
				t.Fatalf("got %d lines %q…, want %d", len(got), short(got), len(c.want))
			}
		})
	}
}

func short(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		if len(v) > 20 {
			v = v[:20] + "…"
		}
		out[i] = v
	}
	return out
}
