package agentapi

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nex-engine/nex/api"
)

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

// The file port of a QEMU VM: the node pushes a deploy's artifact, already
// verified, straight into the guest instead of the agent streaming it over
// NATS through the user-mode network (a sandbox.Stager). PID 1 serves it
// for the VM's life, one frame after another on one connection:
//
//  1. the host writes a FileHeader as one JSON line, then exactly Size bytes;
//  2. the guest writes the bytes to StagedDir/<Name> (mode 0700) and
//     answers one JSON FileReply line: Path, or Error. A refused file's
//     bytes are read and dropped all the same, so the next frame starts
//     where the host expects it.
//
// A VM may also have a stage disk: a read-only virtio-blk device (serial
// StageDiskSerial) backed by a sparse file in the VM's directory on the
// host. The node then writes the file's bytes at the start of that file and
// sends a frame with Size 0 and DiskSize set; the guest copies DiskSize
// bytes from the start of the disk and answers with Disk set. Under
// emulation this moves a file several times faster than the port's 4 KiB
// buffers, each an interrupt and a read. A guest without the disk answers
// NoDisk and the host sends the bytes in a frame; a guest from before the
// disk reads a frame of 0 bytes and answers without Disk, and the host
// then does the same.
//
// A frame with Delete set (and no bytes) asks the guest to delete
// StagedDir/<Name>, a file staged ahead that the node no longer wants
// there; the guest answers an empty FileReply, or Error. A guest from
// before Delete reads it as a file of 0 bytes and answers its Path: the
// file is then empty, which frees its memory all the same.
//
// The agent then takes the file at Path as it takes a staged file in the
// process sandbox (Deploy.StagedPath). StagedDir is on the same tmpfs as
// the agent's work dir, so taking it is a rename, and like every file there
// it lives in guest RAM.
const (
	FilePortName = "nex.files"
	StagedDir    = "/tmp/staged"
	// MaxStagedSize bounds a frame's Size; a VM's RAM bounds it further.
	MaxStagedSize = 1 << 30
	// MaxFileHeader bounds a header line.
	MaxFileHeader = 4 << 10
)

// StageDiskSerial is the serial number of a VM's stage disk.
const StageDiskSerial = "nex-stage"

// FileHeader opens a frame on the file port.
type FileHeader struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// DiskSize, when not 0, is the file's size, its bytes at the start of
	// the stage disk rather than in the frame (Size is then 0).
	DiskSize int64 `json:"disk_size,omitempty"`
	// Delete asks the guest to delete the file Name instead (Size and
	// DiskSize are then 0).
	Delete bool `json:"delete,omitempty"`
	// Trial, when set, asks the guest to give the file, once it is in, a
	// trial start (internal/trial) with Trial.Args: a node's prestage of
	// the artifact it deployed last, with that deploy's arguments.
	Trial *TrialStart `json:"trial,omitempty"`
}

// TrialStart is FileHeader.Trial.
type TrialStart struct {
	Args []string `json:"args,omitempty"`
}

// FileReply is the guest's answer to one frame.
type FileReply struct {
	Path  string `json:"path,omitempty"`
	Error string `json:"error,omitempty"`
	// Disk: the file came from the stage disk.
	Disk bool `json:"disk,omitempty"`
	// NoDisk: the frame named the stage disk and the guest has none; the
	// host should send the bytes.
	NoDisk bool `json:"no_disk,omitempty"`
	// NoRoom: the file was refused because it does not fit in the guest's
	// RAM. Sending it another way would fail the same.
	NoRoom bool `json:"no_room,omitempty"`
}

// CheckStagedName accepts names that are one plain file name in StagedDir:
// 1–128 of [A-Za-z0-9._-], not starting with a dot (so never ".", "..", a
// hidden file, or a path).
func CheckStagedName(name string) error {
	if len(name) > 128 || strings.HasPrefix(name, ".") || !api.OnlyNameChars(name, "._-") {
		return fmt.Errorf("staged file name %q: want 1-128 characters of [A-Za-z0-9._-], not starting with a dot", name)
	}
	return nil
}

// The NATS port of a QEMU VM, which has no network device: every guest
// connection to the node's NATS, the agent's own (the one every clone's
// handshake waits on) and its workloads' (through PID 1's forwarder at
// WorkloadNATSAddr), is a yamux stream on one virtio-serial port
// (internal/vport). In VM metadata the node's NATS is then named by
// NATSPortURL.
const (
	NATSPortName = "nex.nats"
	NATSPortURL  = PortScheme + "://" + NATSPortName + ":4222"
	PortScheme   = "vport"
)

// IsPortURL reports whether a NATS URL names the NATS port.
func IsPortURL(raw string) bool { return strings.HasPrefix(raw, PortScheme+"://") }

// Guest-side addresses of the host channel under QEMU user-mode networking
// (restrict=on with a single guestfwd): the node's internal NATS appears at
// GuestNATSAddr inside the guest. The qemu driver's guests no longer have a
// network device (NATSPortURL); the Firecracker test server's guests use
// this network to stand in for vsock.
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

// Firecracker's vsock. The guest is GuestCID; the host is always CID 2. A
// guest connection to host port P comes out on the host as a connection to
// the unix socket "<uds_path>_P", which the driver listens on and forwards
// to the node's internal NATS. In VM metadata the node's NATS is then named
// by a vsock URL: vsock://2:4222.
const (
	VsockScheme = "vsock"
	HostCID     = 2
	GuestCID    = 3
)

// VsockAddr is a vsock address: context id and port.
type VsockAddr struct {
	CID  uint32
	Port uint32
}

// URL renders a as vsock://<cid>:<port>.
func (a VsockAddr) URL() string { return fmt.Sprintf("%s://%d:%d", VsockScheme, a.CID, a.Port) }

func (a VsockAddr) String() string { return fmt.Sprintf("vsock %d:%d", a.CID, a.Port) }

// ParseVsockURL reads a URL made by VsockAddr.URL. ok is false (and err nil)
// when raw is not a vsock URL at all; err tells what is wrong with one that
// is.
func ParseVsockURL(raw string) (a VsockAddr, ok bool, err error) {
	rest, ok := strings.CutPrefix(raw, VsockScheme+"://")
	if !ok {
		return a, false, nil
	}
	cid, port, found := strings.Cut(rest, ":")
	if !found {
		return a, true, fmt.Errorf("vsock url %q: want vsock://<cid>:<port>", raw)
	}
	c, err := strconv.ParseUint(cid, 10, 32)
	if err != nil {
		return a, true, fmt.Errorf("vsock url %q: context id: %w", raw, err)
	}
	p, err := strconv.ParseUint(port, 10, 32)
	if err != nil || p == 0 {
		return a, true, fmt.Errorf("vsock url %q: bad port", raw)
	}
	return VsockAddr{CID: uint32(c), Port: uint32(p)}, true, nil
}
