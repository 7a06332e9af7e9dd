// Package config is a node's configuration: a plain JSON document with useful
// zero values, strict decoding (unknown fields are refused) and a Validate
// that names the field and what is wrong with it.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
)

// Sandbox driver names.
const (
	SandboxAuto        = "auto"
	SandboxProcess     = "process"
	SandboxQEMU        = "qemu"
	SandboxFirecracker = "firecracker"
)

// Config is the node configuration file. Every field is optional.
type Config struct {
	// MachinePoolSize is how many handshaken sandboxes the warm pool keeps ready.
	MachinePoolSize *int `json:"machine_pool_size,omitempty"`
	// MachineTemplate sizes every VM sandbox.
	MachineTemplate MachineTemplate `json:"machine_template"`
	// Tags are added to the node's tags (nex.* keys are reserved).
	Tags map[string]string `json:"tags,omitempty"`
	// ValidIssuers lists the account public keys (A…) whose workload JWTs are
	// accepted; empty accepts any.
	ValidIssuers []string `json:"valid_issuers,omitempty"`
	// WorkloadTypes the node accepts; default ["native"].
	WorkloadTypes []string `json:"workload_types,omitempty"`
	// Sandbox is the driver: auto (qemu when preflight passes, else
	// process), process, qemu, firecracker.
	Sandbox string `json:"sandbox,omitempty"`
	// KernelFilepath and RootfsFilepath (the initramfs) of VM sandboxes;
	// default: the image `nex rootfs build` puts under the data dir.
	KernelFilepath string `json:"kernel_filepath,omitempty"`
	RootfsFilepath string `json:"rootfs_filepath,omitempty"`
	// VMSnapshots fills a VM pool by restoring clones of a snapshotted VM
	// instead of cold boots (default true; Snapshots reads it).
	VMSnapshots *bool `json:"vm_snapshots,omitempty"`
	// VMPrestage stages the artifact deployed last into every new VM
	// before it joins the warm pool (default true; Prestage reads it).
	VMPrestage *bool `json:"vm_prestage,omitempty"`
	// VMTrialStart has a VM give the artifact staged into it ahead a trial
	// start with its last deploy's arguments (internal/trial; default
	// true, with vm_prestage; TrialStart reads it).
	VMTrialStart *bool `json:"vm_trial_start,omitempty"`
	// QEMUBinary and FirecrackerBinary override the VMM found in PATH.
	QEMUBinary        string `json:"qemu_binary,omitempty"`
	FirecrackerBinary string `json:"firecracker_binary,omitempty"`
	// InternalNodeHost/Port: where the internal NATS server listens
	// (loopback; port 0 picks a free one).
	InternalNodeHost string `json:"internal_node_host,omitempty"`
	InternalNodePort int    `json:"internal_node_port,omitempty"`
	// NodeLimits bound what the node accepts.
	NodeLimits NodeLimits `json:"node_limits"`
	// DataDir holds the embedded NATS store, images and state; StateDir the
	// per-sandbox directories (default <data_dir>/state).
	DataDir  string `json:"data_dir,omitempty"`
	StateDir string `json:"state_dir,omitempty"`
	// HandshakeTimeout bounds start → agent handshake (Go duration).
	HandshakeTimeout Duration `json:"handshake_timeout,omitempty"`
	// AgentPingInterval is how often agents with workloads are pinged; three
	// missed pings mark the agent dead.
	AgentPingInterval Duration `json:"agent_ping_interval,omitempty"`
	// HeartbeatInterval of the heartbeat event (default 30s).
	HeartbeatInterval Duration `json:"heartbeat_interval,omitempty"`
	// WorkloadLeafURL links the workload account to the control plane
	// (nats-leaf://host:7422) when the control plane is external; the
	// embedded control plane is linked automatically.
	WorkloadLeafURL   string `json:"workload_leaf_url,omitempty"`
	WorkloadLeafCreds string `json:"workload_leaf_creds,omitempty"`
	// AllowFileLocations lets deploys use file:// artifact locations.
	AllowFileLocations bool `json:"allow_file_locations,omitempty"`
	// Nexus is an optional grouping name reported in pings.
	Nexus string `json:"nexus,omitempty"`
}

// MachineTemplate sizes VM sandboxes.
type MachineTemplate struct {
	VCPUCount  int `json:"vcpu_count,omitempty"`
	MemSizeMiB int `json:"memsize_mib,omitempty"`
}

// NodeLimits bound what a node accepts.
type NodeLimits struct {
	MaxWorkloads     int   `json:"max_workloads,omitempty"`
	MaxWorkloadBytes int64 `json:"max_workload_bytes,omitempty"`
}

// Defaults.
const (
	DefaultPoolSize = 1
	DefaultVCPU     = 1
	// DefaultMemMiB: a guest's own needs (its kernel, the initramfs with
	// /init, the agent, virtio-serial's receive buffers) take ≈ 110 MiB of
	// 128 with Debian's kernel, so a workload got ≈ 12–17 MiB before the
	// OOM killer ended it. At 256 it gets 136 MiB (197 on nex's small
	// kernel); the host pays only for what a guest touches (an idle clone
	// ≈ 1 MiB more, docs/BENCHMARKS.md).
	DefaultMemMiB            = 256
	DefaultMaxWorkloads      = 64
	DefaultMaxWorkloadBytes  = 256 << 20
	DefaultHandshakeTimeout  = 30 * time.Second
	DefaultAgentPingInterval = 5 * time.Second
	DefaultHeartbeatInterval = 30 * time.Second
)

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalJSON accepts "30s" or a number of milliseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("invalid duration %q", s)
		}
		*d = Duration(v)
		return nil
	}
	var ms int64
	if err := json.Unmarshal(b, &ms); err != nil {
		return fmt.Errorf("duration must be a string like \"30s\" or milliseconds")
	}
	*d = Duration(time.Duration(ms) * time.Millisecond)
	return nil
}

// MarshalJSON writes the Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Load reads, decodes strictly and validates a config file. A missing
// path returns the defaults.
func Load(path string) (*Config, error) {
	c := &Config{}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("config: %w", err)
		}
		defer f.Close()
		if c, err = Decode(f); err != nil {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
	}
	c.ApplyDefaults()
	if err := c.Validate(); err != nil {
		if path != "" {
			return nil, fmt.Errorf("config %s: %w", path, err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	return c, nil
}

// Decode parses a config document, refusing unknown fields with their name.
func Decode(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, describeJSONError(data, err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON document")
	}
	return &c, nil
}

func describeJSONError(data []byte, err error) error {
	var te *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &te):
		return fmt.Errorf("field %q: expected %s, got JSON %s", te.Field, te.Type, te.Value)
	case errors.As(err, &se):
		line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
		return fmt.Errorf("invalid JSON at line %d: %v", line, se)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return err
}

// ApplyDefaults fills zero values.
func (c *Config) ApplyDefaults() {
	if c.MachinePoolSize == nil {
		n := DefaultPoolSize
		c.MachinePoolSize = &n
	}
	if c.MachineTemplate.VCPUCount == 0 {
		c.MachineTemplate.VCPUCount = DefaultVCPU
	}
	if c.MachineTemplate.MemSizeMiB == 0 {
		c.MachineTemplate.MemSizeMiB = DefaultMemMiB
	}
	if len(c.WorkloadTypes) == 0 {
		c.WorkloadTypes = []string{api.WorkloadNative}
	}
	if c.Sandbox == "" {
		c.Sandbox = SandboxAuto
	}
	if c.InternalNodeHost == "" {
		c.InternalNodeHost = "127.0.0.1"
	}
	if c.NodeLimits.MaxWorkloads == 0 {
		c.NodeLimits.MaxWorkloads = DefaultMaxWorkloads
	}
	if c.NodeLimits.MaxWorkloadBytes == 0 {
		c.NodeLimits.MaxWorkloadBytes = DefaultMaxWorkloadBytes
	}
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir()
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Join(c.DataDir, "state")
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = Duration(DefaultHandshakeTimeout)
	}
	if c.AgentPingInterval == 0 {
		c.AgentPingInterval = Duration(DefaultAgentPingInterval)
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = Duration(DefaultHeartbeatInterval)
	}
}

// DefaultDataDir is /var/lib/nex for root, ~/.nex/data otherwise.
func DefaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/nex"
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".nex", "data")
	}
	return filepath.Join(os.TempDir(), "nex")
}

var (
	supported = map[string]bool{api.WorkloadNative: true}
)

// SupportedWorkloadTypes are the types this build can run.
func SupportedWorkloadTypes() []string { return []string{api.WorkloadNative} }

// Validate names the first field that is wrong and what is wrong with it.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if c.MachinePoolSize != nil && (*c.MachinePoolSize < 0 || *c.MachinePoolSize > 256) {
		bad("machine_pool_size", "must be between 0 and 256, got %d", *c.MachinePoolSize)
	}
	if v := c.MachineTemplate.VCPUCount; v < 0 || v > 64 {
		bad("machine_template.vcpu_count", "must be between 1 and 64, got %d", v)
	}
	if v := c.MachineTemplate.MemSizeMiB; v < 0 || (v > 0 && v < 32) || v > 65536 {
		bad("machine_template.memsize_mib", "must be between 32 and 65536, got %d", v)
	}
	for k := range c.Tags {
		if !api.OnlyNameChars(k, "_.-") {
			bad("tags", "key %q may hold only letters, digits, '.', '_' and '-'", k)
		} else if strings.HasPrefix(k, "nex.") && k != "nex.nodename" {
			bad("tags", "key %q is reserved (nex.* tags are set by the node)", k)
		}
	}
	for i, iss := range c.ValidIssuers {
		if !nkeys.IsValidPublicAccountKey(iss) {
			bad(fmt.Sprintf("valid_issuers[%d]", i), "%q is not an account public key (A…)", iss)
		}
	}
	for i, t := range c.WorkloadTypes {
		if !supported[t] {
			bad(fmt.Sprintf("workload_types[%d]", i), "%q is not supported by this node (supported: %s)",
				t, strings.Join(SupportedWorkloadTypes(), ", "))
		}
	}
	switch c.Sandbox {
	case "", SandboxAuto, SandboxProcess, SandboxQEMU, SandboxFirecracker:
	default:
		bad("sandbox", "%q is not a sandbox driver (auto, process, qemu, firecracker)", c.Sandbox)
	}
	for field, p := range map[string]string{"kernel_filepath": c.KernelFilepath, "rootfs_filepath": c.RootfsFilepath} {
		if p != "" {
			if st, err := os.Stat(p); err != nil {
				bad(field, "%v", err)
			} else if st.IsDir() {
				bad(field, "%s is a directory, expected a file", p)
			}
		}
	}
	if c.InternalNodeHost != "" {
		ip := net.ParseIP(c.InternalNodeHost)
		if ip == nil || !ip.IsLoopback() {
			bad("internal_node_host", "must be a loopback address (the internal server is never exposed), got %q", c.InternalNodeHost)
		}
	}
	if p := c.InternalNodePort; p < 0 || p > 65535 {
		bad("internal_node_port", "must be between 0 and 65535, got %d", p)
	}
	if c.NodeLimits.MaxWorkloads < 0 {
		bad("node_limits.max_workloads", "must not be negative, got %d", c.NodeLimits.MaxWorkloads)
	}
	if c.NodeLimits.MaxWorkloadBytes < 0 {
		bad("node_limits.max_workload_bytes", "must not be negative, got %d", c.NodeLimits.MaxWorkloadBytes)
	}
	for field, d := range map[string]Duration{"handshake_timeout": c.HandshakeTimeout,
		"agent_ping_interval": c.AgentPingInterval, "heartbeat_interval": c.HeartbeatInterval} {
		if d < 0 {
			bad(field, "must not be negative, got %s", time.Duration(d))
		} else if d > 0 && time.Duration(d) < 10*time.Millisecond {
			bad(field, "must be at least 10ms, got %s", time.Duration(d))
		}
	}
	if c.WorkloadLeafURL != "" {
		if !strings.Contains(c.WorkloadLeafURL, "://") {
			bad("workload_leaf_url", "%q is not a URL (expected nats-leaf://host:port)", c.WorkloadLeafURL)
		}
	}
	if c.WorkloadLeafCreds != "" {
		if _, err := os.Stat(c.WorkloadLeafCreds); err != nil {
			bad("workload_leaf_creds", "%v", err)
		}
	}
	return errors.Join(errs...)
}

// Snapshots reports whether VM pools are filled with snapshot clones: yes
// unless vm_snapshots is false.
func (c *Config) Snapshots() bool { return c.VMSnapshots == nil || *c.VMSnapshots }

// Prestage reports whether a node stages the artifact it deployed last
// into each new VM ahead of a deploy (sandbox.Prestager): yes unless
// vm_prestage is false.
func (c *Config) Prestage() bool { return c.VMPrestage == nil || *c.VMPrestage }

// TrialStart reports whether artifacts staged ahead get a trial start
// (default true).
func (c *Config) TrialStart() bool { return c.VMTrialStart == nil || *c.VMTrialStart }

// PoolSize returns the configured pool size.
func (c *Config) PoolSize() int {
	if c.MachinePoolSize == nil {
		return DefaultPoolSize
	}
	return *c.MachinePoolSize
}

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }
