package vminit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/nex-engine/nex/internal/splice"
)

// spareTTL is how long a connection the forwarder dialled ahead
// (forwarder.prepare) waits for a workload's before it is closed unused. The
// node's NATS closes a client that has not logged in within its auth
// timeout (nats-server's default, 2 s, which the node keeps): a spare handed
// on must leave the workload time to send CONNECT.
const spareTTL = time.Second

// forwarder accepts the workloads' connections to NATS in the guest
// (127.0.0.1:4222) and splices each to a connection to the node's NATS made
// by dial (a stream on the NATS port under QEMU, vsock on Firecracker;
// nodeDialers).
//
// A deploy calls prepare before its workload starts, and the forwarder dials
// one connection then, so that the first one the workload makes finds the
// node's NATS there, its INFO already in the guest: the way to the host and
// back that a dial takes overlaps the workload's start instead of following
// it.
type forwarder struct {
	ctx  context.Context
	dial func(context.Context) (net.Conn, error)
	log  *slog.Logger
	ttl  time.Duration

	mu    sync.Mutex
	spare *spare
}

// spare is a connection dialled ahead: done is closed once the dial has
// returned c or err.
type spare struct {
	done  chan struct{}
	c     net.Conn
	err   error
	timer *time.Timer
}

func newForwarder(ctx context.Context, dial func(context.Context) (net.Conn, error), log *slog.Logger) *forwarder {
	return &forwarder{ctx: ctx, dial: dial, log: log, ttl: spareTTL}
}

// serve accepts connections on ln and splices each to the spare, or to a
// new connection, until the forwarder's context ends or ln is closed.
func (f *forwarder) serve(ln net.Listener) error {
	stop := context.AfterFunc(f.ctx, func() { ln.Close() })
	defer stop()
	defer f.drop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			up, err := f.upstream()
			if err != nil {
				f.log.Warn("nats forward: dial node", keyError, err)
				return
			}
			splice.Conns(f.ctx, c, up) // closes both
		}()
	}
}

// prepare dials a connection to the node's NATS for the next workload
// connection to take, unless one is there already. Unused, it is closed
// after the forwarder's ttl.
func (f *forwarder) prepare() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.spare != nil || f.ctx.Err() != nil {
		return
	}
	s := &spare{done: make(chan struct{})}
	f.spare = s
	go func() {
		s.c, s.err = f.dial(f.ctx)
		close(s.done)
	}()
	s.timer = time.AfterFunc(f.ttl, func() { f.expire(s) })
}

// take removes the spare, if there is one, and returns it.
func (f *forwarder) take() *spare {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.spare
	f.spare = nil
	if s != nil {
		s.timer.Stop()
	}
	return s
}

// expire closes s if no workload has taken it.
func (f *forwarder) expire(s *spare) {
	f.mu.Lock()
	mine := f.spare == s
	if mine {
		f.spare = nil
	}
	f.mu.Unlock()
	if mine {
		s.close()
	}
}

// drop closes the spare, once the forwarder ends.
func (f *forwarder) drop() {
	if s := f.take(); s != nil {
		s.close()
	}
}

func (s *spare) close() {
	<-s.done
	if s.c != nil {
		s.c.Close()
	}
}

// upstream is the connection for a workload's: the spare when there is one
// and its dial worked, else a new one.
func (f *forwarder) upstream() (net.Conn, error) {
	if s := f.take(); s != nil {
		<-s.done
		if s.err == nil {
			return s.c, nil
		}
		f.log.Debug("nats forward: the connection dialled ahead failed; dialling again", keyError, s.err)
	}
	return f.dial(f.ctx)
}

// rehearseForward runs a workload's first steps through the forwarder at
// addr once, for the agent's rehearsal (agent/rehearse.go): a connection
// to it, which the forwarder splices to a new one to the node's NATS,
// whose INFO line it reads. Then it hangs up: it never sends CONNECT, so
// the node's NATS sees a client that left before it logged in.
func rehearseForward(ctx context.Context, addr string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	defer context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "INFO ") {
		return fmt.Errorf("the node's NATS said %q, not INFO", strings.TrimSpace(line))
	}
	return nil
}
