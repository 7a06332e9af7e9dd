package agent

import (
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
)

// A workload can print faster than the node can pass its lines on to the
// control plane's NATS, and a node serves many agents on one subscription:
// lines it has not handled yet queue in its NATS client, which drops the
// newest beyond a limit, and with them, behind a flood, the workload's exit
// report. So when the node says it answers them (HandshakeReply.LogSync),
// the agent asks after every window of lines for the node's word that it
// has handled them (agentapi.SyncSubject, which the node answers in order
// with the rest of the agent's output), and before it sends the window
// after, waits for that word on the window before: the node has one window
// to work on while the next comes. While the agent
// waits it reads no more of the workload's output: the pipe fills and the
// workload's writes block, as a terminal's would. No line is dropped, and a
// node holds at most two windows of each agent's lines.
const (
	logWindowLines = 1024
	logWindowBytes = 256 << 10
	// logSyncTimeout bounds a wait: a node that does not answer (it is
	// stopping, or overloaded beyond this) gets the rest of the lines
	// unconfirmed.
	logSyncTimeout = 10 * time.Second
)

type logFlow struct {
	mu           sync.Mutex
	sync         bool               // the node answers syncs
	lines, bytes int                // sent since the last sync
	replies      *nats.Subscription // the node's answers, on inbox
	inbox        string
	answers      chan struct{} // one per answer
	unanswered   int           // syncs sent and awaited
}

func (a *agent) publishLog(stream, text string) {
	body, _ := json.Marshal(agentapi.LogLine{Stream: stream, Text: text, Time: time.Now()})
	f := &a.logs
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := a.nc.Publish(agentapi.LogsSubject(a.id), body); err != nil {
		a.log.Debug("publish log", keyError, err)
		return
	}
	f.lines++
	f.bytes += len(body)
	if !f.sync || (f.lines < logWindowLines && f.bytes < logWindowBytes) {
		return
	}
	f.lines, f.bytes = 0, 0
	if f.replies == nil {
		// An asynchronous subscription whose handler never blocks: the
		// connection's drain, when the agent ends, must not wait for
		// answers nobody reads.
		f.inbox = a.nc.NewInbox()
		answers := make(chan struct{}, 2) // no more than two are awaited
		var err error
		f.replies, err = a.nc.Subscribe(f.inbox, func(*nats.Msg) {
			select {
			case answers <- struct{}{}:
			default:
			}
		})
		f.answers = answers
		if err != nil {
			a.log.Warn("log flow control off", keyError, err)
			f.sync = false
			return
		}
	}
	if err := a.nc.PublishRequest(agentapi.SyncSubject(a.id), f.inbox, nil); err != nil {
		return
	}
	// The node answers in order: one answer is the window before's.
	for f.unanswered++; f.unanswered > 1; f.unanswered-- {
		select {
		case <-f.answers:
		case <-time.After(logSyncTimeout):
			// A node that far behind is stopping or stuck: waiting again
			// for every window would hold the workload up for as long.
			a.log.Warn("the node did not confirm the workload's log lines; sending the rest unconfirmed", "waited", logSyncTimeout)
			_ = f.replies.Unsubscribe()
			f.sync = false
			return
		}
	}
}
