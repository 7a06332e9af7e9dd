// Package agentapi is the contract between a node and the agents in its
// sandboxes: the metadata an agent boots with, the subjects on the node's
// internal NATS server, and the messages on them. Every driver, the agent and
// the node speak only this.
package agentapi

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Version of the agent protocol; sent in the handshake.
const Version = "1"

// Metadata is what an agent needs to reach its node. The process driver
// passes it in the environment, VM drivers on the kernel command line.
type Metadata struct {
	SandboxID string `json:"id"`
	NATSURL   string `json:"nats"` // internal NATS as the agent reaches it
	Seed      string `json:"seed"` // the agent's nkey user seed (SU…)
}

// Environment variables of the process sandbox.
const (
	EnvSandboxID = "NEX_SANDBOX_ID"
	EnvNATSURL   = "NEX_AGENT_NATS_URL"
	EnvSeed      = "NEX_AGENT_SEED"
)

// Kernel command-line keys of VM sandboxes.
const (
	ArgSandboxID = "nex.id"
	ArgNATSURL   = "nex.nats"
	ArgSeed      = "nex.seed"
)

// Validate names the first missing field.
func (m Metadata) Validate() error {
	switch {
	case m.SandboxID == "":
		return fmt.Errorf("agent metadata: sandbox id is empty")
	case m.NATSURL == "":
		return fmt.Errorf("agent metadata: nats url is empty")
	case m.Seed == "":
		return fmt.Errorf("agent metadata: seed is empty")
	}
	return nil
}

// Env renders the metadata as KEY=value pairs for a child process.
func (m Metadata) Env() []string {
	return []string{EnvSandboxID + "=" + m.SandboxID, EnvNATSURL + "=" + m.NATSURL, EnvSeed + "=" + m.Seed}
}

// FromEnv reads metadata written by Env.
func FromEnv(getenv func(string) string) (Metadata, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	m := Metadata{SandboxID: getenv(EnvSandboxID), NATSURL: getenv(EnvNATSURL), Seed: getenv(EnvSeed)}
	return m, m.Validate()
}

// KernelArgs renders the metadata for a kernel command line. Values hold no
// spaces (ids, URLs and nkey seeds never do).
func (m Metadata) KernelArgs() string {
	return ArgSandboxID + "=" + m.SandboxID + " " + ArgNATSURL + "=" + m.NATSURL + " " + ArgSeed + "=" + m.Seed
}

// FromKernelArgs reads metadata from /proc/cmdline's contents.
func FromKernelArgs(cmdline string) (Metadata, error) {
	var m Metadata
	for _, f := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			continue
		}
		switch k {
		case ArgSandboxID:
			m.SandboxID = v
		case ArgNATSURL:
			m.NATSURL = v
		case ArgSeed:
			m.Seed = v
		}
	}
	return m, m.Validate()
}

// Subjects on the internal NATS server. An agent's user may publish and
// subscribe only under SubjectRoot(id) and its own inbox prefix.
func SubjectRoot(id string) string      { return "agentint." + id }
func HandshakeSubject(id string) string { return SubjectRoot(id) + ".handshake" }
func DeploySubject(id string) string    { return SubjectRoot(id) + ".deploy" }
func UndeploySubject(id string) string  { return SubjectRoot(id) + ".undeploy" }
func PingSubject(id string) string      { return SubjectRoot(id) + ".ping" }
func ArtifactSubject(id string) string  { return SubjectRoot(id) + ".artifact" }
func LogsSubject(id string) string      { return SubjectRoot(id) + ".out.logs" }
func EventsSubject(id string) string    { return SubjectRoot(id) + ".out.events" }

// OutputSubject matches an agent's logs and events together, so a node that
// subscribes to it sees them in the order the agent sent them (the last log
// lines before the exit event). id may be "*".
func OutputSubject(id string) string { return SubjectRoot(id) + ".out.*" }

// SyncSubject is a request, among an agent's output, for the node's word
// that it has handled everything the agent sent before it: the agent's
// log flow control (HandshakeReply.LogSync), and the node's own wait for
// an ended agent's last output.
func SyncSubject(id string) string    { return SubjectRoot(id) + ".out.sync" }
func TriggerSubject(id string) string { return SubjectRoot(id) + ".trigger" }
func InboxPrefix(id string) string    { return "_INBOX_" + id }

// Handshake is the agent's first request, on HandshakeSubject.
type Handshake struct {
	SandboxID    string    `json:"sandbox_id"`
	AgentVersion string    `json:"agent_version"`
	Message      string    `json:"message"`
	StartedAt    time.Time `json:"started_at"`
	PID1         bool      `json:"pid1"` // agent runs as a VM's init
}

// HandshakeReply lets a (possibly restored) agent reset its clock and reseed
// its randomness before it takes work.
type HandshakeReply struct {
	OK      bool      `json:"ok"`
	Error   string    `json:"error,omitempty"`
	Now     time.Time `json:"now"`
	Entropy []byte    `json:"entropy,omitempty"` // 32 random bytes
	// LogSync: the node answers requests on SyncSubject, so the agent may
	// wait for them to pace a workload's output (agent/logflow.go).
	LogSync bool `json:"log_sync,omitempty"`
}

// Deploy asks the agent to fetch the artifact and run it.
type Deploy struct {
	WorkloadID string            `json:"workload_id"`
	Name       string            `json:"name"`
	Namespace  string            `json:"namespace"`
	Type       string            `json:"type"`
	Argv       []string          `json:"argv,omitempty"`
	Env        map[string]string `json:"env,omitempty"` // keys already upper-cased
	Hash       string            `json:"hash"`          // hex sha256 of the artifact
	Size       int64             `json:"size"`
	// StagedPath, when set, is where the node already put the artifact it
	// verified (sandboxes sharing the host filesystem; in a QEMU VM, the
	// file port of vm.go): the agent checks its size and does not fetch it
	// over NATS.
	StagedPath string `json:"staged_path,omitempty"`
	// Unstage lists files the node staged ahead of this deploy
	// (sandbox.Prestager) that it does not use and could not delete
	// itself (sandbox.Prestager.Unstage): the agent deletes them, when they
	// are in its staged directory, so they do not take guest RAM for as
	// long as the workload runs.
	Unstage []string `json:"unstage,omitempty"`
	// Workload NATS credentials (a user of the node's workload account). The
	// agent sets NATS_URL from them when Env has none, pointing at the address
	// it itself reaches the node with (or its in-guest forwarder).
	NATSUser     string   `json:"nats_user,omitempty"`
	NATSPassword string   `json:"nats_password,omitempty"`
	Triggers     []string `json:"trigger_subjects,omitempty"`
}

// Reply is the generic answer to node→agent requests.
type Reply struct {
	OK      bool   `json:"ok"`
	Error   string `json:"error,omitempty"`
	Running bool   `json:"running,omitempty"` // ping: a workload is running
}

// ArtifactChunk asks for Length bytes from Offset; the reply is the raw
// bytes (empty at EOF), or a message with header ErrorHeader.
type ArtifactChunk struct {
	Offset int64 `json:"offset"`
	Length int   `json:"length"`
}

// ErrorHeader carries an error on a reply whose body is not JSON.
const ErrorHeader = "Nex-Error"

// ChunkSize is the artifact chunk size agents request.
const ChunkSize = 1 << 20

// Undeploy asks the agent to stop its workload and exit.
type Undeploy struct {
	Reason string `json:"reason,omitempty"`
}

// LogLine is published by the agent on LogsSubject.
type LogLine struct {
	Stream string    `json:"stream"` // stdout | stderr | agent
	Text   string    `json:"text"`
	Time   time.Time `json:"time"`
}

// Agent event types on EventsSubject.
const (
	EventWorkloadStarted = "workload_started"
	EventWorkloadExited  = "workload_exited"
)

// Event is published by the agent on EventsSubject.
type Event struct {
	Type       string `json:"type"`
	WorkloadID string `json:"workload_id"`
	Code       int    `json:"code"`
	Message    string `json:"message,omitempty"`
	// OutOfMemory is set on an exit event when the kernel's OOM killer
	// ended the workload (workload.Exit.OutOfMemory).
	OutOfMemory bool `json:"out_of_memory,omitempty"`
}
