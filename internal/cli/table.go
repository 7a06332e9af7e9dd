package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/jedib0t/go-pretty/v6/table"
	"github.com/jedib0t/go-pretty/v6/text"
)

// newTable is a go-pretty table in the rounded style of the Nex 0.2 CLI.
// Titles stay plain (no colour) so output is the same on a terminal, in a
// pipe and in tests.
func newTable(title string, header ...any) table.Writer {
	t := table.NewWriter()
	style := table.StyleRounded
	style.Title.Align = text.AlignLeft
	style.Format.Header = text.FormatDefault // "Version", as the 0.2 CLI prints, not "VERSION"
	t.SetStyle(style)
	if title != "" {
		t.SetTitle(title)
	}
	if len(header) > 0 {
		t.AppendHeader(table.Row(header))
	}
	return t
}

// renderTable writes t followed by a newline.
func renderTable(w io.Writer, t table.Writer) error {
	_, err := fmt.Fprintln(w, t.Render())
	return err
}

// writeJSON prints v as indented JSON, the --json output of every command.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeJSONLine prints v as one line of JSON, for streams (logs, events).
func writeJSONLine(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

// shortID abbreviates a node id (56 characters) for one-line output; full ids
// stay in tables and --json.
func shortID(id string) string {
	const n = 10
	if len(id) <= n {
		return id
	}
	return id[:n]
}

// kib formats a /proc/meminfo kB figure.
func kib(kb int) string {
	const unit = 1024
	v := float64(kb)
	for _, u := range []string{"KiB", "MiB", "GiB"} {
		if v < unit {
			return fmt.Sprintf("%.1f %s", v, u)
		}
		v /= unit
	}
	return fmt.Sprintf("%.1f TiB", v)
}

// clock formats an event or log time the same way everywhere (local time,
// milliseconds).
func clock(t time.Time) string {
	if t.IsZero() {
		return "--:--:--.---"
	}
	return t.Local().Format("15:04:05.000")
}
