package agent

import (
	"bytes"
	"sync"
	"unicode/utf8"
)

// maxLogLine is the longest text one LogLine carries; longer lines are sent
// in pieces so one runaway line cannot exceed a message's size.
const maxLogLine = 8 << 10

// lineWriter turns a workload's output stream into log lines. Output without
// a final newline is kept until Flush, which the agent calls once the
// workload has ended and its pipes are drained.
type lineWriter struct {
	stream string
	emit   func(stream, text string)

	mu  sync.Mutex
	buf []byte
}

func newLineWriter(stream string, emit func(stream, text string)) *lineWriter {
	return &lineWriter{stream: stream, emit: emit}
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			p = nil
		} else {
			w.buf = append(w.buf, p[:i]...)
			p = p[i+1:]
		}
		for len(w.buf) > maxLogLine {
			cut := runeStart(w.buf, maxLogLine)
			w.emit(w.stream, string(w.buf[:cut]))
			w.buf = append(w.buf[:0], w.buf[cut:]...)
		}
		if i >= 0 {
			w.line()
		}
	}
	return n, nil
}

// Flush sends what is left of an unterminated last line.
func (w *lineWriter) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.line()
	}
}

func (w *lineWriter) line() {
	w.emit(w.stream, string(bytes.TrimSuffix(w.buf, []byte("\r"))))
	w.buf = w.buf[:0]
	if cap(w.buf) > 4*maxLogLine {
		w.buf = nil // give back what one long line grew
	}
}

// runeStart backs off from n to the start of a UTF-8 sequence so a piece
// never splits a character; text that is not UTF-8 is cut at n.
func runeStart(b []byte, n int) int {
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(b[i]) {
			return i
		}
	}
	return n
}
