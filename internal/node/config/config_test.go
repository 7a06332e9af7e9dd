package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaults(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.PoolSize() != DefaultPoolSize || c.MachineTemplate.MemSizeMiB != DefaultMemMiB ||
		c.Sandbox != SandboxAuto || c.InternalNodeHost != "127.0.0.1" || len(c.WorkloadTypes) != 1 ||
		c.StateDir != filepath.Join(c.DataDir, "state") || !c.Snapshots() {
		t.Fatalf("unexpected defaults: %+v", c)
	}
}

func TestValidFullConfig(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	_ = os.WriteFile(kernel, []byte("x"), 0o644)
	doc := `{
	  "machine_pool_size": 2,
	  "machine_template": {"vcpu_count": 1, "memsize_mib": 256},
	  "tags": {"region": "eu", "nex.nodename": "n1"},
	  "valid_issuers": ["AAF37GARLO57CEYRQZT2YFFNSGQH6QF2VX4XVU3PFNWL6L7ML5UYBY7R"],
	  "workload_types": ["native"],
	  "sandbox": "process",
	  "kernel_filepath": "` + kernel + `",
	  "internal_node_host": "127.0.0.1", "internal_node_port": 0,
	  "node_limits": {"max_workloads": 3, "max_workload_bytes": 1048576},
	  "data_dir": "` + dir + `",
	  "handshake_timeout": "5s", "agent_ping_interval": 2000, "heartbeat_interval": "1m",
	  "vm_snapshots": false
	}`
	path := filepath.Join(dir, "c.json")
	_ = os.WriteFile(path, []byte(doc), 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.PoolSize() != 2 || c.NodeLimits.MaxWorkloads != 3 || c.AgentPingInterval.D().Seconds() != 2 || c.Snapshots() {
		t.Fatalf("decoded %+v", c)
	}
}

func TestBadConfigsNameTheField(t *testing.T) {
	cases := []struct{ name, doc, want string }{
		{"not json", `{"machine_pool_size": }`, "invalid JSON at line 1"},
		{"trailing", `{} {}`, "trailing data"},
		{"unknown field", `{"machine_pool_sise": 1}`, `unknown field "machine_pool_sise"`},
		{"wrong type", `{"machine_pool_size": "two"}`, `field "machine_pool_size": expected int`},
		{"negative pool", `{"machine_pool_size": -1}`, "machine_pool_size: must be between 0 and 256"},
		{"huge pool", `{"machine_pool_size": 100000}`, "machine_pool_size: must be between 0 and 256"},
		{"vcpu", `{"machine_template": {"vcpu_count": 1000}}`, "machine_template.vcpu_count"},
		{"mem", `{"machine_template": {"memsize_mib": 8}}`, "machine_template.memsize_mib"},
		{"unknown nested", `{"machine_template": {"memory": 8}}`, `unknown field "memory"`},
		{"reserved tag", `{"tags": {"nex.os": "plan9"}}`, `tags: key "nex.os" is reserved`},
		{"bad tag key", `{"tags": {"a b": "x"}}`, `tags: key "a b"`},
		{"issuer", `{"valid_issuers": ["UABC"]}`, "valid_issuers[0]"},
		{"workload type", `{"workload_types": ["cobol"]}`, `workload_types[0]: "cobol" is not supported`},
		{"sandbox", `{"sandbox": "docker"}`, `sandbox: "docker" is not a sandbox driver`},
		{"kernel missing", `{"kernel_filepath": "/nope/vmlinux"}`, "kernel_filepath:"},
		{"rootfs dir", `{"rootfs_filepath": "/tmp"}`, "rootfs_filepath: /tmp is a directory"},
		{"internal host", `{"internal_node_host": "0.0.0.0"}`, "internal_node_host: must be a loopback"},
		{"internal port", `{"internal_node_port": 70000}`, "internal_node_port"},
		{"limits", `{"node_limits": {"max_workloads": -2}}`, "node_limits.max_workloads"},
		{"limit bytes", `{"node_limits": {"max_workload_bytes": -2}}`, "node_limits.max_workload_bytes"},
		{"duration syntax", `{"handshake_timeout": "soon"}`, `invalid duration "soon"`},
		{"duration small", `{"heartbeat_interval": "1ns"}`, "heartbeat_interval: must be at least 10ms"},
		{"leaf url", `{"workload_leaf_url": "localhost"}`, "workload_leaf_url"},
		{"leaf creds", `{"workload_leaf_creds": "/nope.creds"}`, "workload_leaf_creds"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.json")
			_ = os.WriteFile(path, []byte(tc.doc), 0o644)
			_, err := Load(path)
			if err == nil {
				t.Fatalf("accepted %s", tc.doc)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
		})
	}
}

func TestMissingFile(t *testing.T) {
	if _, err := Load("/nope/config.json"); err == nil || !strings.Contains(err.Error(), "/nope/config.json") {
		t.Fatalf("got %v", err)
	}
}
