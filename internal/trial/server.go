package trial

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NATSAddr is where a trial start finds its NATS server: the address a
// deploy's NATS_URL names in a VM (PID 1's forwarder there).
const NATSAddr = "127.0.0.1:4222"

// maxRequests bounds the requests a trial's server sends in all.
const maxRequests = 16

// trialInbox starts the reply subject of the server's requests.
const trialInbox = "_INBOX.trial."

// server is a trial start's NATS server, in the trial's own network
// namespace: as much of one as a client's first steps need, so that the
// program's connection, its subscriptions and its first request run before
// its deploy does. It sends INFO, PONG to each PING, and to each
// subscription (other than an inbox's or a system subject's) one request
// with no data, whose reply it takes. What it is sent goes nowhere.
type server struct {
	requests, replies atomic.Int32
	// answered, if set, is called the first time every request sent has
	// its reply (allAnswered), when done is set: what a trial start is for
	// has run.
	answered     func()
	answeredOnce sync.Once
	done         atomic.Bool

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup // the connections' goroutines
}

// serve accepts connections on ln until it is closed.
func (s *server) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		if s.conns == nil {
			s.conns = map[net.Conn]struct{}{}
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			_ = s.conn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}

// close refuses new connections, gives those open up to linger to read
// what their peer sent before it ended (its replies), and closes them.
func (s *server) close(linger time.Duration) {
	done := make(chan struct{})
	go func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(linger):
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

const info = `{"server_id":"nex-trial","server_name":"nex-trial","version":"2.10.0","proto":1,` +
	`"headers":true,"max_payload":1048576,"host":"127.0.0.1","port":4222}`

// subscribeWait is how long a request to a new subscription waits for the
// client's next PING: many clients subscribe, then PING and read until
// the PONG (a flush), and a request that came before it would be skipped.
const subscribeWait = 50 * time.Millisecond

// conn speaks NATS's text protocol on c until it ends. The requests to the
// subscriptions it is told of go out after the PONG to the next PING, or
// after subscribeWait without one.
func (s *server) conn(c net.Conn) error {
	if _, err := io.WriteString(c, "INFO "+info+"\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	var pending, line string
	for {
		if pending != "" {
			c.SetReadDeadline(time.Now().Add(subscribeWait))
		}
		part, err := r.ReadString('\n')
		line += part
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			c.SetReadDeadline(time.Time{})
			if _, err := io.WriteString(c, pending); err != nil {
				return err
			}
			pending = ""
			continue
		case err != nil:
			return err
		}
		f := strings.Fields(line)
		line = ""
		if len(f) == 0 {
			continue
		}
		var out string
		switch op := strings.ToUpper(f[0]); op {
		case "PING":
			out, pending = "PONG\r\n"+pending, ""
			c.SetReadDeadline(time.Time{})
		case "SUB": // SUB subject [queue] sid
			if len(f) >= 3 {
				pending += s.request(f[1], f[len(f)-1])
			}
		case "PUB", "HPUB": // PUB subject [reply] size, HPUB subject [reply] hsize size
			n, err := strconv.Atoi(f[len(f)-1])
			if err != nil || n < 0 {
				return fmt.Errorf("trial server: bad %q", strings.TrimSpace(strings.Join(f, " ")))
			}
			c.SetReadDeadline(time.Time{}) // the payload is on its way
			if _, err := io.CopyN(io.Discard, r, int64(n)+2); err != nil {
				return err
			}
			if len(f) >= 3 && strings.HasPrefix(f[1], trialInbox) {
				s.replies.Add(1)
				if s.allAnswered() {
					s.answeredOnce.Do(func() {
						s.done.Store(true)
						if s.answered != nil {
							s.answered()
						}
					})
				}
			}
		}
		if out != "" {
			if _, err := io.WriteString(c, out); err != nil {
				return err
			}
		}
	}
}

// allAnswered reports whether requests were sent and each has its reply.
func (s *server) allAnswered() bool {
	sent := min(s.requests.Load(), maxRequests)
	return sent > 0 && s.replies.Load() >= sent
}

// request is the MSG of one request to a subscription of subject with sid,
// or "" for an inbox's or a system subject's, or once maxRequests are sent.
// Wildcard tokens become a name of their own.
func (s *server) request(subject, sid string) string {
	if strings.HasPrefix(subject, "_INBOX.") || strings.HasPrefix(subject, "$") {
		return ""
	}
	n := s.requests.Add(1)
	if n > maxRequests {
		return ""
	}
	tokens := strings.Split(subject, ".")
	for i, t := range tokens {
		if t == "*" || t == ">" {
			tokens[i] = "trial"
		}
	}
	return fmt.Sprintf("MSG %s %s %s%d 0\r\n\r\n", strings.Join(tokens, "."), sid, trialInbox, n)
}
