package api

import (
	"encoding/json"
	"time"
)

// Event types published on $NEX.events.<ns>.<type>.
const (
	EventNodeStarted           = "node_started"
	EventNodeStopped           = "node_stopped"
	EventHeartbeat             = "heartbeat"
	EventLameDuckEntered       = "node_entered_lameduck"
	EventAgentStarted          = "agent_started"
	EventAgentStopped          = "agent_stopped"
	EventWorkloadDeployed      = "workload_deployed"
	EventWorkloadUndeployed    = "workload_undeployed"
	EventFunctionExecSucceeded = "function_exec_succeeded"
	EventFunctionExecFailed    = "function_exec_failed"
	// nex extensions
	EventSandboxFailed = "sandbox_failed"
)

// CloudEvent is a CloudEvents 1.0 JSON event.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype"`
	Data            json.RawMessage `json:"data"`
	Namespace       string          `json:"namespace"`
}

// NodeStartedEvent is the data of node_started.
type NodeStartedEvent struct {
	Version string            `json:"version"`
	ID      string            `json:"id"`
	Tags    map[string]string `json:"tags,omitempty"`
}

// NodeStoppedEvent is the data of node_stopped.
type NodeStoppedEvent struct {
	ID       string `json:"id"`
	Graceful bool   `json:"graceful"`
}

// HeartbeatEvent is the data of heartbeat.
type HeartbeatEvent struct {
	Version         string            `json:"version"`
	NodeID          string            `json:"node_id"`
	Nexus           string            `json:"nexus,omitempty"`
	Uptime          string            `json:"uptime"`
	Tags            map[string]string `json:"tags,omitempty"`
	RunningMachines int               `json:"running_machines"`
}

// LameDuckEnteredEvent is the data of node_entered_lameduck.
type LameDuckEnteredEvent struct {
	Version string `json:"version"`
	ID      string `json:"id"`
}

// AgentStartedEvent is the data of agent_started.
type AgentStartedEvent struct {
	AgentVersion string `json:"agent_version"`
	SandboxID    string `json:"sandbox_id,omitempty"` // nex extension
}

// AgentStoppedEvent is the data of agent_stopped.
type AgentStoppedEvent struct {
	Message   string `json:"message"`
	Code      int    `json:"code"`
	SandboxID string `json:"sandbox_id,omitempty"` // nex extension
}

// WorkloadDeployedEvent is the data of workload_deployed.
type WorkloadDeployedEvent struct {
	WorkloadName string `json:"workload_name"`
	TotalBytes   int64  `json:"total_bytes"`
	WorkloadID   string `json:"workload_id,omitempty"` // nex extension
}

// WorkloadUndeployedEvent is the data of workload_undeployed.
type WorkloadUndeployedEvent struct {
	WorkloadName string `json:"workload_name"`
	Code         int    `json:"code"`
	Message      string `json:"message"`
	WorkloadID   string `json:"workload_id,omitempty"` // nex extension
}

// SandboxFailedEvent (nex extension) reports a sandbox that failed to start,
// handshake, or died.
type SandboxFailedEvent struct {
	SandboxID string `json:"sandbox_id"`
	Driver    string `json:"driver"`
	Message   string `json:"message"`
}

// LogEntry is the body of a $NEX.logs message.
type LogEntry struct {
	Namespace  string    `json:"namespace"`
	NodeID     string    `json:"node_id"`
	WorkloadID string    `json:"workload_id"`
	Timestamp  time.Time `json:"timestamp"`
	Text       string    `json:"text"`
	Level      int       `json:"level"`
	ID         string    `json:"id"`
}
