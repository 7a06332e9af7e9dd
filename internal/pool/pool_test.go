package pool

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

type member struct{ n int64 }

func counter() (Factory[*member], *atomic.Int64) {
	var n atomic.Int64
	return func(ctx context.Context) (*member, error) {
		return &member{n: n.Add(1)}, nil
	}, &n
}

// full starts a pool of target members made by f and waits until they are
// all ready; it is closed when the test ends (closing it again is harmless).
func full[M comparable](t *testing.T, f Factory[M], target int) *Pool[M] {
	t.Helper()
	p := New(f, Options{Target: target})
	p.Start()
	t.Cleanup(func() { p.Close() })
	if err := p.Wait(ctxT(t), target); err != nil {
		t.Fatal(err)
	}
	return p
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFillsToTargetAndRefillsAfterTake(t *testing.T) {
	f, made := counter()
	p := full(t, f, 3)
	m, err := p.Take(ctxT(t))
	if err != nil || m == nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctxT(t), 3); err != nil {
		t.Fatal(err)
	}
	if made.Load() != 4 {
		t.Fatalf("made %d members, want 4", made.Load())
	}
	if st := p.Status(); st.Ready != 3 || st.Target != 3 {
		t.Fatalf("status %+v", st)
	}
}

func TestZeroTargetStartsOnDemand(t *testing.T) {
	f, made := counter()
	p := New(f, Options{Target: 0})
	p.Start()
	defer p.Close()
	if _, err := p.Take(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if made.Load() != 1 {
		t.Fatalf("made %d", made.Load())
	}
}

func TestFailuresBackOffAndRecover(t *testing.T) {
	var calls atomic.Int64
	var failed atomic.Int64
	f := func(ctx context.Context) (*member, error) {
		if calls.Add(1) <= 3 {
			return nil, errors.New("boom")
		}
		return &member{}, nil
	}
	p := New(f, Options{Target: 1, Parallel: 1, MinBackoff: time.Millisecond, OnFailure: func(error) { failed.Add(1) }})
	p.Start()
	defer p.Close()
	if err := p.Wait(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	if failed.Load() != 3 {
		t.Fatalf("OnFailure called %d times, want 3", failed.Load())
	}
	if st := p.Status(); st.ConsecutiveFailures != 0 || st.LastError != "" {
		t.Fatalf("failures not reset: %+v", st)
	}
}

func TestStatusReportsPersistentFailure(t *testing.T) {
	f := func(ctx context.Context) (*member, error) { return nil, errors.New("no kernel") }
	p := New(f, Options{Target: 1, MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond})
	p.Start()
	defer p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Status().ConsecutiveFailures < 3 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := p.Status(); st.ConsecutiveFailures < 3 || st.LastError != "no kernel" {
		t.Fatalf("status %+v", st)
	}
}

func TestRemoveAndClose(t *testing.T) {
	f, _ := counter()
	p := full(t, f, 2)
	m, _ := p.Take(ctxT(t))
	if p.Remove(m) {
		t.Fatal("removed a member that was taken")
	}
	if err := p.Wait(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	left := p.Close()
	if len(left) != 2 {
		t.Fatalf("close returned %d members", len(left))
	}
	if _, err := p.Take(ctxT(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("take after close: %v", err)
	}
}

func TestTakeHonoursContext(t *testing.T) {
	block := make(chan struct{})
	f := func(ctx context.Context) (*member, error) {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil, errors.New("cancelled")
	}
	p := New(f, Options{Target: 1})
	p.Start()
	defer func() { close(block); p.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := p.Take(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}

func TestRefillDelayHoldsRefillUntilSomeoneWaits(t *testing.T) {
	f, made := counter()
	p := New(f, Options{Target: 1, RefillDelay: time.Hour})
	p.Start()
	defer p.Close()
	if err := p.Wait(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Take(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// The refill is held back: nobody waits and the delay is an hour.
	time.Sleep(50 * time.Millisecond)
	if st := p.Status(); made.Load() != 1 || st.Ready != 0 || st.Starting != 0 {
		t.Fatalf("refill ran during the delay: made %d, status %+v", made.Load(), st)
	}
	// A second taker must not wait for the delay (ctxT gives it 10 s).
	if _, err := p.Take(ctxT(t)); err != nil {
		t.Fatal(err)
	}
}

func TestRefillDelayElapses(t *testing.T) {
	f, made := counter()
	p := New(f, Options{Target: 2, RefillDelay: 20 * time.Millisecond})
	p.Start()
	defer p.Close()
	if err := p.Wait(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Take(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctxT(t), 2); err != nil {
		t.Fatal(err)
	}
	if made.Load() != 3 {
		t.Fatalf("made %d, want 3", made.Load())
	}
}

// TakePreferring hands out the longest-ready member prefer accepts, else
// the longest-ready one; the others stay in order.
func TestTakePreferring(t *testing.T) {
	f, _ := counter()
	p := full(t, f, 3)
	p.mu.Lock()
	p.o.Target = 0    // no refills: the three members are all there is
	var order []int64 // longest-ready first (factories run side by side)
	for _, m := range p.ready {
		order = append(order, m.n)
	}
	p.mu.Unlock()
	take := func(prefer func(*member) bool) int64 {
		t.Helper()
		m, err := p.TakePreferring(ctxT(t), prefer)
		if err != nil {
			t.Fatal(err)
		}
		return m.n
	}
	if got := take(func(m *member) bool { return m.n == order[1] }); got != order[1] {
		t.Fatalf("took %d, want the preferred %d (ready: %v)", got, order[1], order)
	}
	if got := take(func(m *member) bool { return m.n == 99 }); got != order[0] {
		t.Fatalf("took %d with no preferred member, want the longest-ready %d (ready: %v)", got, order[0], order)
	}
	if got := take(nil); got != order[2] {
		t.Fatalf("took %d, want %d (ready: %v)", got, order[2], order)
	}
}

type discarded struct {
	n    int
	gone atomic.Bool
}

func (d *discarded) Discard() { d.gone.Store(true) }

// A lent member stays the pool's: nothing starts in its place, it comes
// back as the newest, and a Take that found the pool empty gets it.
func TestLendAndReturn(t *testing.T) {
	f, made := counter()
	p := full(t, f, 2)
	p.mu.Lock()
	first, second := p.ready[0], p.ready[1]
	p.mu.Unlock()
	if _, ok := p.Lend(func(*member) bool { return false }); ok {
		t.Fatal("lent a member pick refused")
	}
	m, ok := p.Lend(func(m *member) bool { return true })
	if !ok || m != first {
		t.Fatalf("lent %v, %v; want the longest-ready %v", m, ok, first)
	}
	p.mu.Lock()
	missing := p.missing()
	p.mu.Unlock()
	if st := p.Status(); missing != 0 || st.Ready != 1 || st.Lent != 1 || st.Starting != 0 {
		t.Fatalf("with one lent: status %+v, %d missing; want 1 ready, 1 lent, none to start", st, missing)
	}
	if n := p.Count(func(*member) bool { return true }); n != 2 {
		t.Fatalf("counted %d members with one lent, want 2", n)
	}
	if n := p.Count(func(x *member) bool { return x == m }); n != 1 {
		t.Fatalf("counted %d lent members, want 1", n)
	}
	p.Return(m)
	p.mu.Lock()
	order := []*member{p.ready[0], p.ready[1]}
	p.mu.Unlock()
	if order[0] != second || order[1] != first || p.Status().Lent != 0 {
		t.Fatalf("after return: ready %v, want %v then %v", order, second, first)
	}

	// A Take that waits while the only member is lent gets it back.
	p.SetTarget(0)
	if _, err := p.Take(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	m, _ = p.Lend(func(*member) bool { return true })
	got := make(chan *member)
	go func() {
		m, _ := p.Take(ctxT(t))
		got <- m
	}()
	eventuallyWaiting(t, p)
	if _, ok := p.Lend(func(*member) bool { return true }); ok {
		t.Fatal("lent while a take waits")
	}
	p.Return(m)
	select {
	case g := <-got:
		if g != m {
			t.Fatalf("the waiting take got %v, want the lent %v", g, m)
		}
	case <-ctxT(t).Done():
		t.Fatal("the waiting take got nothing")
	}
	// With the target at 0 the lent member was all the take needed.
	if made.Load() != 2 {
		t.Fatalf("made %d members, want 2", made.Load())
	}
}

func eventuallyWaiting(t *testing.T, p *Pool[*member]) {
	t.Helper()
	for ctx := ctxT(t); p.Status().Waiting == 0; {
		select {
		case <-ctx.Done():
			t.Fatal("no take waited")
		case <-time.After(time.Millisecond):
		}
	}
}

// A lent member that dies is removed; one returned after Close is
// discarded.
func TestLentMemberRemovedOrReturnedAfterClose(t *testing.T) {
	var n atomic.Int64
	p := full(t, func(ctx context.Context) (*discarded, error) { return &discarded{n: int(n.Add(1))}, nil }, 2)
	a, _ := p.Lend(func(*discarded) bool { return true })
	if !p.Remove(a) {
		t.Fatal("a lent member was not the pool's to remove")
	}
	p.Return(a)
	if err := p.Wait(ctxT(t), 2); err != nil { // the refill replaced it
		t.Fatal(err)
	}
	p.mu.Lock()
	back := slices.Contains(p.ready, a)
	p.mu.Unlock()
	if back || a.gone.Load() {
		t.Fatalf("a removed member came back (%v) or the pool discarded it (%v): the remover does", back, a.gone.Load())
	}

	b, _ := p.Lend(func(*discarded) bool { return true })
	left := p.Close()
	if len(left) != 1 || slices.Contains(left, b) {
		t.Fatalf("close returned %v; want the one member not lent", left)
	}
	p.Return(b)
	if !b.gone.Load() {
		t.Fatal("a member returned after close was not discarded")
	}
}
