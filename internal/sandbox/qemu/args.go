package qemu

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/guestimage"
)

// Names of a sandbox's files inside its directory. QEMU runs with that
// directory as its working directory and is given these relative names, so
// its unix socket paths stay far below the 108-byte sun_path limit however
// deep the node's state dir is.
const (
	consoleFile = "console.log"
	agentSock   = "agent.sock"
	filesSock   = "files.sock"
	natsSock    = "nats.sock"
	qmpSock     = "qmp.sock"
	stageDisk   = "stage.img"
)

// Descriptors QEMU inherits (vm.qmpFile and vm.state, see launch). The driver
// listens on qmp.sock itself and hands QEMU the listening socket, so a
// connection to it succeeds from the moment QEMU starts, and QMP is read
// as soon as QEMU writes, with no retries while it initializes. A clone
// reads its template's device state from an inherited descriptor too.
const (
	qmpFD   = 3
	stateFD = 4
)

// Guest kernel command line. Every option is there for boot time or
// reliability on microvm (shared/notes/microvm-on-this-host.md):
// tsc_early_khz avoids the TSC calibration hang that stalled ~20 % of boots,
// cryptomgr.notests and the kprobe initcall are the two biggest savings,
// panic=-1 reboot=t with -no-reboot turn a guest panic, and the restart
// PID 1 ends a VM with (vminit's powerOff), into a QEMU exit.
const kernelCmdline = "console=ttyS0 quiet panic=-1 reboot=t cryptomgr.notests " +
	"initcall_blacklist=init_kprobe_trace mitigations=off nokaslr"

// Under TCG every guest instruction is emulated, and some of the kernel's
// boot work that costs little on hardware costs a lot here (measured with a
// sampler of the guest's PC, 6.1 cloud kernel, and the console's printk
// times):
//
//   - noreplace-smp: a kernel that finds one CPU rewrites every LOCK prefix
//     in its text, each one a text_poke with two page-table switches and a
//     TLB flush: ≈ 0.35 s. The LOCK prefixes stay; they are cheap.
//   - noapictimer, for one vCPU and a kernel without ACPI (nex's own,
//     guestimage.CmdlineDevices): the APIC timer's calibration counts
//     100 ms of guest time and took 0.23–0.3 s of every cold boot; the PIT
//     drives the tick instead. Debian's kernel keeps the APIC timer: it
//     takes its interrupt routing from microvm's ACPI tables, which carry
//     no override for the PIT's IRQ 0 (its boot runs no timer check), and
//     with noapictimer nothing ticks: the console's timestamps stand still
//     after "Disabling APIC timer" until the TSC clocksource takes over,
//     and the agent handshakes but then never wakes from a timer (deploys
//     and pings time out). nex's kernel boots from the MP table and checks
//     the PIT's route ("..TIMER: vector=0x30 apic1=0 pin1=2").
//   - tsc=reliable: without it the guest kept time with refined-jiffies,
//     counting timer ticks (the TSC was listed but not used), and a tick
//     that came late on a busy host was time lost: a clone fell 1.1 s
//     behind the host in 95 s while the host compiled a kernel. Under TCG
//     the guest's TSC is the host's plus an offset, so it is as good as the
//     host's clock; with it the same clone kept within 10 ms over 105 s.
//     On KVM the guest takes kvm-clock and this changes nothing.
//   - highres=off nohz=off, with noapictimer: a kernel with a clocksource
//     fit for high resolution switches its tick to one-shot mode, which
//     with the PIT as the timer means reprogramming it, port I/O that is
//     slow here, for every timer: a deploy's first reply took 10–25 % longer
//     on nex's kernel once it kept the TSC. These keep the periodic tick it
//     had with refined-jiffies. Debian's kernel programs its APIC timer,
//     which is cheap, and its first reply came 15 % sooner with the TSC.
//
// TCGClockArg keeps a guest under TCG on the TSC (tcgCmdline). fctest adds
// it to the Firecracker boot line it runs under TCG.
const TCGClockArg = "tsc=reliable"

const (
	tcgCmdline         = "noreplace-smp " + TCGClockArg
	tcgUPNoACPICmdline = "noapictimer highres=off nohz=off"
)

// tbSizeMiB bounds TCG's translation cache. QEMU's default is 1 GiB, filled
// as the guest runs code it has not run before and only emptied when full,
// so a long-lived VM's QEMU could grow towards it. A cold boot to the
// handshake fills ≈ 54 MiB and a snapshot clone ≈ 18 MiB; a cache smaller
// than what a boot needs is flushed during it and the boot translates its
// code again (at 32 MiB cold boots took up to 0.7 s longer, at 16 MiB
// 1.2 s, at 8 MiB 4.5 s).
const tbSizeMiB = 64

// tcgCPU is the CPU model under TCG. RDRAND lets the guest kernel's CRNG be
// ready at once: without it the first getrandom (crypto/rand, in nats.go's
// package init) waits ≈ 1 s for the kernel to gather jitter entropy.
const tcgCPU = "qemu64,+rdrand"

// ramFile backs guest RAM with a file so it can be shared by snapshot clones.
type ramFile struct {
	Path string
	// Shared maps the file MAP_SHARED (the template writes its RAM into the
	// file); clones map it privately, copy-on-write.
	Shared bool
}

// machine is everything a QEMU command line is made of. Paths of the
// sandbox's own files are relative to its directory (QEMU's cwd); Kernel,
// Initrd and RAM are absolute.
type machine struct {
	Name      string
	Kernel    string
	Initrd    string
	MemoryMiB int
	VCPU      int
	Accel     accel.Kind
	// TBSizeMiB bounds TCG's translation cache; 0: QEMU's default.
	TBSizeMiB int
	TSCkHz    int // 0: unknown, left out
	RAM       *ramFile
	// Incoming makes QEMU wait for QMP migrate-incoming (snapshot clones),
	// which loads the state from descriptor stateFD.
	Incoming bool
	// NoACPI boots without ACPI tables: QEMU lists the virtio-mmio devices
	// on the kernel command line instead, for a kernel that reads them there
	// (guestimage.CmdlineDevices). The guest then skips ACPI's interpreter.
	NoACPI bool
	// BIOS is the firmware's path (Firmware); "": QEMU's default.
	BIOS string
}

// MicrovmMachine is -M's value for a guest booting kernel: QEMU's microvm,
// without ACPI when the kernel finds its devices on the command line
// (guestimage.CmdlineDevices), as the driver runs it.
func MicrovmMachine(kernel string) string {
	noACPI, _ := guestimage.CmdlineDevices(kernel)
	return microvm(noACPI)
}

func microvm(noACPI bool) string {
	if noACPI {
		return "microvm,acpi=off"
	}
	return "microvm"
}

func (m machine) args() []string {
	mopt := microvm(m.NoACPI)
	if m.RAM != nil {
		mopt += ",memory-backend=mem"
	}
	a := []string{
		"-name", m.Name,
		"-M", mopt,
		"-m", strconv.Itoa(m.MemoryMiB),
		"-smp", strconv.Itoa(m.VCPU),
		"-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
	}
	if m.BIOS != "" {
		a = append(a, "-bios", m.BIOS)
	}
	if m.Accel == accel.TCG && m.TBSizeMiB > 0 {
		a = append(a, "-accel", fmt.Sprintf("tcg,tb-size=%d", m.TBSizeMiB))
	} else {
		a = append(a, "-accel", string(m.Accel))
	}
	if m.Accel == accel.KVM {
		// Only real KVM can pass the host CPU through; under TCG (and on a
		// PVM nested hypervisor) -cpu host aborts.
		a = append(a, "-cpu", "host")
	} else {
		a = append(a, "-cpu", tcgCPU)
	}
	if m.RAM != nil {
		share := "off"
		if m.RAM.Shared {
			share = "on"
		}
		a = append(a, "-object", fmt.Sprintf("memory-backend-file,id=mem,size=%dM,mem-path=%s,share=%s",
			m.MemoryMiB, qemuOptValue(m.RAM.Path), share))
	}
	cmdline := kernelCmdline
	if m.Accel != accel.KVM {
		cmdline += " " + tcgCmdline
		if m.VCPU == 1 && m.NoACPI {
			cmdline += " " + tcgUPNoACPICmdline
		}
	}
	if m.TSCkHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.Itoa(m.TSCkHz)
	}
	// A clone's guest comes from the template's RAM and device state: QEMU
	// need not read the kernel and initramfs (40 MB) into its boot
	// firmware's tables, which took a clone's QEMU ≈ 5 ms longer to start
	// and kept ≈ 2 MiB more of it resident.
	if !m.Incoming {
		a = append(a, "-kernel", m.Kernel, "-initrd", m.Initrd, "-append", cmdline)
	}
	a = append(a,
		"-serial", "file:"+consoleFile,
		// The config channel: the driver listens on agent.sock, QEMU dials it.
		"-device", "virtio-serial-device",
		"-chardev", "socket,path="+agentSock+",server=off,id=c0",
		"-device", "virtserialport,chardev=c0,name="+agentapi.ConfigPortName,
		// The file port (files.go): the driver listens on files.sock too.
		"-chardev", "socket,path="+filesSock+",server=off,id=c1",
		"-device", "virtserialport,chardev=c1,name="+agentapi.FilePortName,
		// The NATS port (internal/vport), on nats.sock: every connection
		// the guest makes to the node's NATS, the agent's own and (through
		// PID 1's forwarder) its workloads'. There is no network device:
		// the guest reaches the node's NATS through this port and nothing
		// else at all.
		"-chardev", "socket,path="+natsSock+",server=off,id=c2",
		"-device", "virtserialport,chardev=c2,name="+agentapi.NATSPortName,
		// The file port's stage disk (files.go): read-only to the guest,
		// through the host's page cache (QEMU's default cache mode), so
		// the guest reads what the driver wrote into the file before it
		// sent the frame. 16 requests in flight are plenty for one
		// reader; QEMU's default of 256 has the guest allocate (and a
		// clone map) ≈ 3 MiB more for its requests.
		"-drive", "if=none,id=stage,format=raw,readonly=on,file="+stageDisk,
		"-device", "virtio-blk-device,drive=stage,queue-size=16,serial="+agentapi.StageDiskSerial,
	)
	a = append(a, qmpArgs()...)
	if m.Incoming {
		a = append(a, "-incoming", "defer")
	}
	return a
}

// qmpArgs put QMP on the listening socket the driver made (qmpFD).
func qmpArgs() []string {
	return []string{
		"-chardev", "socket,id=qmp,fd=" + strconv.Itoa(qmpFD) + ",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
	}
}

// qemuOptValue escapes a value inside a QEMU -object/-device option string,
// where a comma is written twice.
func qemuOptValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }
