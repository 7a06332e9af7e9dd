package api

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Workload types accepted on the wire.
const (
	WorkloadNative = "native"
	WorkloadV8     = "v8" // JavaScript (goja); the Nex 0.2 name stays accepted
	WorkloadWasm   = "wasm"
)

// Tag keys every node sets.
const (
	TagOS       = "nex.os"
	TagArch     = "nex.arch"
	TagCPUCount = "nex.cpucount"
	TagUnsafe   = "nex.unsafe"
	TagLameDuck = "nex.lameduck"
)

// PingResponse answers $NEX.PING, $NEX.PING.<node> and is the auction bid.
type PingResponse struct {
	NodeID          string            `json:"node_id"`
	Nexus           string            `json:"nexus,omitempty"`
	Version         string            `json:"version"`
	Uptime          string            `json:"uptime"`
	TargetXkey      string            `json:"target_xkey"`
	Tags            map[string]string `json:"tags,omitempty"`
	RunningMachines int               `json:"running_machines"`
}

// AuctionRequest asks matching nodes to bid; every given field must match.
type AuctionRequest struct {
	Arch          *string           `json:"arch,omitempty"`
	OS            *string           `json:"os,omitempty"`
	Sandboxed     *bool             `json:"sandboxed,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
	WorkloadTypes []string          `json:"workload_types,omitempty"`
}

// WorkloadPingMachine is one running workload in a WorkloadPingResponse.
type WorkloadPingMachine struct {
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Type      string `json:"type"`
}

// WorkloadPingResponse answers $NEX.WPING.
type WorkloadPingResponse struct {
	NodeID          string                `json:"node_id"`
	TargetXkey      string                `json:"target_xkey"`
	Version         string                `json:"version"`
	Tags            map[string]string     `json:"tags,omitempty"`
	Uptime          string                `json:"uptime"`
	RunningMachines []WorkloadPingMachine `json:"running_machines"`
}

// MemoryStat is in kB, as /proc/meminfo reports it.
type MemoryStat struct {
	MemTotal     int `json:"total"`
	MemFree      int `json:"free"`
	MemAvailable int `json:"available"`
}

// WorkloadDescription describes the workload inside a machine.
type WorkloadDescription struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Runtime     string `json:"runtime"`
	Type        string `json:"type"`
	Hash        string `json:"hash"`
}

// MachineSummary is one machine (sandbox with a workload) in InfoResponse.
type MachineSummary struct {
	ID        string              `json:"id"`
	Healthy   bool                `json:"healthy"`
	Uptime    string              `json:"uptime"`
	Namespace string              `json:"namespace"`
	Workload  WorkloadDescription `json:"workload"`
	// SandboxID (nex extension) is the sandbox the workload runs in now;
	// empty while an essential workload is being restarted.
	SandboxID string `json:"sandbox_id,omitempty"`
	// Retries (nex extension) counts restarts of an essential workload.
	Retries int `json:"retry_count,omitempty"`
}

// PoolStatus is a nex extension to InfoResponse: the warm pool's health.
type PoolStatus struct {
	Driver   string `json:"driver"`
	Target   int    `json:"target"`
	Ready    int    `json:"ready"`
	Starting int    `json:"starting"`
	Failures int    `json:"consecutive_failures"`
	LastErr  string `json:"last_error,omitempty"`
	// Boot says how the driver starts sandboxes, when it has more to say
	// than its name (microVMs: snapshot clones or cold boots, and why).
	Boot string `json:"boot,omitempty"`
	// StagedAhead counts the ready sandboxes that hold the artifact
	// deployed last, staged ahead (microVMs with vm_prestage): a deploy of
	// it into one of them skips copying it.
	StagedAhead int `json:"staged_ahead,omitempty"`
}

// InfoResponse answers $NEX.INFO.<ns>.<node>.
type InfoResponse struct {
	Version                string            `json:"version"`
	Uptime                 string            `json:"uptime"`
	PublicXKey             string            `json:"public_xkey"`
	Tags                   map[string]string `json:"tags,omitempty"`
	Memory                 *MemoryStat       `json:"memory,omitempty"`
	Machines               []MachineSummary  `json:"machines"`
	SupportedWorkloadTypes []string          `json:"supported_workload_types,omitempty"`
	Pool                   *PoolStatus       `json:"pool,omitempty"` // nex extension
}

// ConnectionInfo carries NATS credentials for triggers and host services.
type ConnectionInfo struct {
	NatsURL      string `json:"nats_url"`
	NatsUserJWT  string `json:"nats_user_jwt"`
	NatsUserSeed string `json:"nats_user_seed"`
}

// DeployRequest asks a node to run a workload.
type DeployRequest struct {
	Argv                 []string        `json:"argv,omitempty"`
	Description          *string         `json:"description,omitempty"`
	WorkloadType         string          `json:"type"`
	Location             *Location       `json:"location"`
	Essential            *bool           `json:"essential,omitempty"`
	WorkloadJWT          *string         `json:"workload_jwt"`
	EncryptedEnvironment *string         `json:"environment"`
	JsDomain             *string         `json:"jsdomain,omitempty"`
	SenderPublicKey      *string         `json:"sender_public_key"`
	TargetNode           *string         `json:"target_node"`
	TriggerSubjects      []string        `json:"trigger_subjects,omitempty"`
	TriggerConnection    *ConnectionInfo `json:"trigger_connection,omitempty"`
	HostServices         *ConnectionInfo `json:"host_services,omitempty"`
	RetryCount           *uint           `json:"retry_count,omitempty"`
	RetriedAt            *time.Time      `json:"retried_at,omitempty"`
}

// RunResponse answers a deploy.
type RunResponse struct {
	Started bool   `json:"started"`
	ID      string `json:"id"`
	Issuer  string `json:"issuer"`
	Name    string `json:"name"`
}

// StopRequest asks a node to stop a workload.
type StopRequest struct {
	WorkloadID  string `json:"workload_id"`
	WorkloadJWT string `json:"workload_jwt"`
	TargetNode  string `json:"target_node"`
}

// StopResponse answers a stop.
type StopResponse struct {
	Stopped bool   `json:"stopped"`
	ID      string `json:"id"`
	Issuer  string `json:"issuer"`
	Name    string `json:"name"`
}

// LameDuckResponse answers $NEX.LAMEDUCK.<node>.
type LameDuckResponse struct {
	NodeID  string `json:"node_id"`
	Success bool   `json:"success"`
}

// Location is where a workload's artifact lives. On the wire Nex 0.2 clients
// send Go's url.URL marshalled as an object; a plain URL string is accepted
// too. It always marshals as the object form so 0.2 nodes understand us.
type Location struct{ url.URL }

// ParseLocation parses a nats://bucket/key or file:// URL.
func ParseLocation(s string) (*Location, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("parse location %q: %w", s, err)
	}
	return &Location{URL: *u}, nil
}

// MarshalJSON writes the url.URL object form.
func (l Location) MarshalJSON() ([]byte, error) { return json.Marshal(l.URL) }

// UnmarshalJSON accepts the url.URL object form or a string.
func (l *Location) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		u, err := url.Parse(s)
		if err != nil {
			return fmt.Errorf("location %q: %w", s, err)
		}
		l.URL = *u
		return nil
	}
	// url.URL has an unexported-field Userinfo pointer that marshals as {};
	// decode through a shadow type that ignores it.
	var obj struct {
		Scheme, Opaque, Host, Path, RawPath, RawQuery, Fragment, RawFragment string
		OmitHost, ForceQuery                                                 bool
	}
	if err := json.Unmarshal(b, &obj); err != nil {
		return fmt.Errorf("location: %w", err)
	}
	l.URL = url.URL{Scheme: obj.Scheme, Opaque: obj.Opaque, Host: obj.Host, Path: obj.Path,
		RawPath: obj.RawPath, RawQuery: obj.RawQuery, Fragment: obj.Fragment,
		RawFragment: obj.RawFragment, OmitHost: obj.OmitHost, ForceQuery: obj.ForceQuery}
	return nil
}

// Bucket and Key split a nats://bucket/key location.
func (l *Location) Bucket() string { return l.Host }

// Key is the object name inside the bucket.
func (l *Location) Key() string { return strings.TrimPrefix(l.Path, "/") }

// WorkloadClaimsData is the private claim set of a workload JWT.
type WorkloadClaimsData struct {
	Hash string `json:"hash"`
}
