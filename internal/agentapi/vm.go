package agentapi

import "time"

// The config channel of a VM sandbox. A VM's agent learns who it is from the
// host at run time rather than from its kernel command line, so one booted
// and snapshotted guest can be restored many times, each clone getting its
// own identity, clock and entropy before it takes work:
//
//  1. the guest's init (PID 1) finishes booting and opens the channel;
//  2. it writes ReadyLine;
//  3. the host answers with one line: a JSON VMConfig;
//  4. the guest sets its clock, mixes Entropy into its RNG, and runs the
//     agent with Metadata.
//
// On QEMU the channel is the virtio-serial port named ConfigPortName, carried
// to the host over a unix socket; on Firecracker it is vsock port
// ConfigVsockPort (host side: the "<uds>_<port>" socket Firecracker dials).
const (
	ConfigPortName  = "nex.agent"
	ConfigVsockPort = 1024
	NATSVsockPort   = 4222
	ReadyLine       = "NEX-READY"
)

// Guest-side addresses of the host channel under QEMU user-mode networking
// (restrict=on with a single guestfwd): the node's internal NATS appears at
// GuestNATSAddr inside the guest.
const (
	GuestIP       = "10.0.2.15"
	GuestNetmask  = 24
	GuestNATSAddr = "10.0.2.100:4222"
	// WorkloadNATSAddr is where workloads in a VM find NATS: the agent
	// listens here and forwards to the node.
	WorkloadNATSAddr = "127.0.0.1:4222"
)

// VMConfig is the host's answer on the config channel.
type VMConfig struct {
	Metadata Metadata  `json:"metadata"` // NATSURL as the guest reaches it
	Now      time.Time `json:"now"`
	Entropy  []byte    `json:"entropy"` // 64 random bytes
}
