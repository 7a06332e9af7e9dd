// Package pool keeps a number of ready (handshaken) sandboxes warm. A take
// hands one out at once and refill starts in the background; a sandbox that
// fails to start is discarded and retried with backoff, so one bad sandbox
// never stops the node.
package pool

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Factory starts one member and returns it once it is ready. On failure it
// must have cleaned up after itself.
type Factory[M any] func(ctx context.Context) (M, error)

// Options configure a pool.
type Options struct {
	// Target is how many ready members to keep.
	Target int
	// Parallel bounds concurrent starts (default 2).
	Parallel int
	// MinBackoff and MaxBackoff bound the delay after consecutive failures
	// (defaults 100ms and 10s).
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
	// OnFailure is called for every failed start (events, metrics).
	OnFailure func(err error)
	// RefillDelay defers the refill that a Take causes, so the new member's
	// start does not compete for the CPU with whatever the taker starts in
	// the member it took. The refill starts at once if someone is waiting.
	RefillDelay time.Duration
}

// Status is a snapshot of the pool.
type Status struct {
	Target, Ready, Starting, Waiting int
	// Lent counts members out on a short job of the caller's (Lend).
	Lent                int
	ConsecutiveFailures int
	LastError           string
}

// Pool keeps members of type M ready.
type Pool[M comparable] struct {
	o       Options
	factory Factory[M]

	mu       sync.Mutex
	ready    []M
	lent     map[M]struct{} // Lend: out, still the pool's
	starting int
	waiting  int
	failures int
	lastErr  error
	changed  chan struct{} // closed and replaced on every change
	closed   bool
	// deferUntil holds refills back after a Take (Options.RefillDelay);
	// deferTimer pokes the refill loop when it passes.
	deferUntil time.Time
	deferTimer *time.Timer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}
}

// ErrClosed is returned by Take after Close.
var ErrClosed = errors.New("pool closed")

// New makes a pool; Start begins filling it.
func New[M comparable](factory Factory[M], o Options) *Pool[M] {
	if o.Parallel <= 0 {
		o.Parallel = 2
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 100 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Pool[M]{o: o, factory: factory, lent: map[M]struct{}{}, changed: make(chan struct{}), ctx: ctx,
		cancel: cancel, kick: make(chan struct{}, 1)}
}

// Start runs the refill loop until Close.
func (p *Pool[M]) Start() {
	p.wg.Add(1)
	go p.refill()
	p.poke()
}

func (p *Pool[M]) poke() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// notify wakes waiters; call with mu held.
func (p *Pool[M]) notify() {
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Pool[M]) refill() {
	defer p.wg.Done()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.kick:
		}
		for {
			p.mu.Lock()
			if p.closed || p.missing() <= 0 || p.starting >= p.o.Parallel {
				p.mu.Unlock()
				break
			}
			if wait := time.Until(p.deferUntil); wait > 0 && p.waiting == 0 {
				if p.deferTimer == nil {
					p.deferTimer = time.AfterFunc(wait, p.poke)
				} else {
					p.deferTimer.Reset(wait)
				}
				p.mu.Unlock()
				break
			}
			delay := time.Duration(0)
			if p.failures > 0 {
				delay = p.o.MinBackoff << min(p.failures-1, 16)
				delay = min(delay, p.o.MaxBackoff)
			}
			p.starting++
			p.mu.Unlock()
			p.wg.Add(1)
			go p.startOne(delay)
		}
	}
}

// missing is how many members to start: the target and the takers
// waiting, less those ready, lent or starting. Call with mu held.
func (p *Pool[M]) missing() int {
	return p.o.Target + p.waiting - len(p.ready) - len(p.lent) - p.starting
}

func (p *Pool[M]) startOne(delay time.Duration) {
	defer p.wg.Done()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-p.ctx.Done():
			p.mu.Lock()
			p.starting--
			p.mu.Unlock()
			return
		}
	}
	m, err := p.factory(p.ctx)
	p.mu.Lock()
	p.starting--
	if err != nil {
		p.failures++
		p.lastErr = err
		p.notify()
		p.mu.Unlock()
		if p.ctx.Err() == nil {
			p.o.Log.Warn("sandbox start failed; retrying with backoff", "error", err, "consecutive_failures", p.failures)
			if p.o.OnFailure != nil {
				p.o.OnFailure(err)
			}
		}
		p.poke()
		return
	}
	if p.closed {
		p.mu.Unlock()
		p.discard(m)
		return
	}
	p.failures = 0
	p.lastErr = nil
	p.ready = append(p.ready, m)
	p.notify()
	p.mu.Unlock()
	p.poke()
}

func (p *Pool[M]) discard(m M) {
	if d, ok := any(m).(interface{ Discard() }); ok {
		d.Discard()
	}
}

// Take returns a ready member, waiting for one if none is ready. Refill of
// the taken place starts at once, or after Options.RefillDelay when nobody
// else is waiting.
func (p *Pool[M]) Take(ctx context.Context) (M, error) { return p.TakePreferring(ctx, nil) }

// TakePreferring is Take, handing out the longest-ready member that prefer
// accepts when there is one (the node: a VM that already holds the deploy's
// artifact), else the longest-ready one. prefer (nil: none) runs under the
// pool's lock: it must be quick and must not call the pool.
func (p *Pool[M]) TakePreferring(ctx context.Context, prefer func(M) bool) (M, error) {
	var zero M
	p.mu.Lock()
	p.waiting++
	for {
		if p.closed {
			p.waiting--
			p.mu.Unlock()
			return zero, ErrClosed
		}
		if len(p.ready) > 0 {
			i := 0
			if prefer != nil {
				if j := slices.IndexFunc(p.ready, prefer); j >= 0 {
					i = j
				}
			}
			m := p.ready[i]
			p.ready = slices.Delete(p.ready, i, i+1)
			p.waiting--
			p.deferUntil = time.Now().Add(p.o.RefillDelay)
			p.notify()
			p.mu.Unlock()
			p.poke()
			return m, nil
		}
		ch := p.changed
		p.mu.Unlock()
		p.poke()
		select {
		case <-ch:
		case <-ctx.Done():
			p.mu.Lock()
			p.waiting--
			p.mu.Unlock()
			return zero, ctx.Err()
		}
		p.mu.Lock()
	}
}

// Lend hands out, for a short job of the caller's (the node stages a file
// into a waiting VM), the longest-ready member that pick accepts. It stays
// the pool's while lent: no refill replaces it, Remove drops it, and a Take
// that finds no other member waits for it (or for a new one, as always).
// Lend lends nothing while a Take waits, or after Close. pick runs under
// the pool's lock, as TakePreferring's prefer does. Give the member back
// with Return.
func (p *Pool[M]) Lend(pick func(M) bool) (M, bool) {
	var zero M
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.waiting > 0 {
		return zero, false
	}
	i := slices.IndexFunc(p.ready, pick)
	if i < 0 {
		return zero, false
	}
	m := p.ready[i]
	p.ready = slices.Delete(p.ready, i, i+1)
	p.lent[m] = struct{}{}
	p.notify()
	return m, true
}

// Return puts a lent member back as the newest ready one. A member removed
// while lent (Remove: it died) stays out; one returned after Close is
// discarded, since Close handed out only the members it held.
func (p *Pool[M]) Return(m M) {
	p.mu.Lock()
	if _, ok := p.lent[m]; !ok {
		p.mu.Unlock()
		return
	}
	delete(p.lent, m)
	if p.closed {
		p.mu.Unlock()
		p.discard(m)
		return
	}
	p.ready = append(p.ready, m)
	p.notify()
	p.mu.Unlock()
	p.poke()
}

// Remove drops a member that died while waiting in the pool (or while
// lent); it reports whether m was the pool's.
func (p *Pool[M]) Remove(m M) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.lent[m]; ok {
		delete(p.lent, m)
		p.notify()
		p.poke()
		return true
	}
	for i, r := range p.ready {
		if r == m {
			p.ready = append(p.ready[:i:i], p.ready[i+1:]...)
			p.notify()
			p.poke()
			return true
		}
	}
	return false
}

// Count counts the ready and lent members that match accepts; match runs
// under the pool's lock, as TakePreferring's prefer does.
func (p *Pool[M]) Count(match func(M) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, m := range p.ready {
		if match(m) {
			n++
		}
	}
	for m := range p.lent {
		if match(m) {
			n++
		}
	}
	return n
}

// SetTarget changes how many ready members the pool keeps.
func (p *Pool[M]) SetTarget(n int) {
	p.mu.Lock()
	p.o.Target = n
	p.mu.Unlock()
	p.poke()
}

// Status reports the pool's state.
func (p *Pool[M]) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{Target: p.o.Target, Ready: len(p.ready), Starting: p.starting, Waiting: p.waiting,
		Lent: len(p.lent), ConsecutiveFailures: p.failures}
	if p.lastErr != nil {
		s.LastError = p.lastErr.Error()
	}
	return s
}

// Wait blocks until at least n members are ready or ctx ends.
func (p *Pool[M]) Wait(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		ok, ch := len(p.ready) >= n, p.changed
		p.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops refilling, waits for starts under way and returns the members
// that were still ready, for the caller to stop.
func (p *Pool[M]) Close() []M {
	p.mu.Lock()
	p.closed = true
	p.notify()
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	left := p.ready
	p.ready = nil
	return left
}
