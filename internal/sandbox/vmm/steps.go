// Package vmm holds what the microVM drivers (qemu, firecracker) share: a
// VM's start as an ordered list of named steps, and the VMM process — its
// own process group, killed with the node, its end recorded once and
// explained.
package vmm

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Step is one named step of starting a VM whose state is V.
type Step[V any] struct {
	Name string
	Run  func(ctx context.Context, v V) error
}

// Steps is a start as data: a variant (a snapshot clone, a template) is
// another list made with Replace, InsertBefore and Append, and one loop runs
// and logs them all.
type Steps[V any] []Step[V]

func (s Steps[V]) index(name string) int {
	for i, st := range s {
		if st.Name == name {
			return i
		}
	}
	panic("vmm: no step " + name)
}

// Replace returns a copy with the step called name swapped for with.
func (s Steps[V]) Replace(name string, with Step[V]) Steps[V] {
	out := append(Steps[V](nil), s...)
	out[s.index(name)] = with
	return out
}

// InsertBefore returns a copy with add before the step called name.
func (s Steps[V]) InsertBefore(name string, add Step[V]) Steps[V] {
	i := s.index(name)
	out := append(Steps[V](nil), s[:i]...)
	out = append(out, add)
	return append(out, s[i:]...)
}

// Append returns a copy with add at the end.
func (s Steps[V]) Append(add ...Step[V]) Steps[V] {
	return append(append(Steps[V](nil), s...), add...)
}

// Log keys of the step log.
const (
	LogStep = "step"
	LogTook = "took"
)

// Run runs the steps in order, logging each at debug level; the first error
// ends the run, wrapped with its step's name.
func (s Steps[V]) Run(ctx context.Context, v V, log *slog.Logger) error {
	for _, st := range s {
		t0 := time.Now()
		if err := st.Run(ctx, v); err != nil {
			return fmt.Errorf("%s: %w", st.Name, err)
		}
		log.Debug("Boot step done", LogStep, st.Name, LogTook, time.Since(t0))
	}
	return nil
}
