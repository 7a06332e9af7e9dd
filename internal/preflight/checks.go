package preflight

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nex-engine/nex/internal/accel"
	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/node/config"
	"github.com/nex-engine/nex/internal/sandbox"
	"github.com/nex-engine/nex/internal/sandbox/firecracker"
	"github.com/nex-engine/nex/internal/sandbox/qemu"
)

// Check names shared by every sandbox.
const (
	CheckFirecracker = "firecracker"
	CheckKVM         = "kvm"
	CheckFreeDisk    = "free disk"
	CheckStateDir    = "state dir"
	CheckGuestAgent  = "guest agent"
)

// Checks lists what a node with o's sandbox needs, in the order a person
// would fix them.
func Checks(o Options) []Check {
	o = o.withDefaults()
	var checks []Check
	switch o.Sandbox {
	case config.SandboxProcess:
	case config.SandboxFirecracker:
		checks = append(checks,
			Check{Name: CheckFirecracker, Run: o.checkFirecracker},
			Check{Name: CheckKVM, Run: checkKVM})
		checks = append(checks, o.imageChecks()...)
	default: // qemu, auto
		checks = append(checks,
			Check{Name: qemu.CheckBinary, Run: o.checkQEMU, Fix: installQEMU},
			Check{Name: qemu.CheckBuild, Run: o.checkQEMUBuild},
			Check{Name: qemu.CheckAccel, Run: checkAccel})
		checks = append(checks, o.imageChecks()...)
		checks = append(checks, Check{Name: qemu.CheckSnapshotDir, Run: o.checkSnapshots})
	}
	return append(checks,
		Check{Name: CheckFreeDisk, Run: o.checkFreeDisk},
		Check{Name: CheckStateDir, Run: func(context.Context) sandbox.Check {
			return sandbox.CheckWritableDir(CheckStateDir, o.StateDir)
		}})
}

func (o Options) imageChecks() []Check {
	check := func(name string, pick func(kernel, initrd string) string) Check {
		return Check{Name: name, Fix: o.buildImage, Run: func(context.Context) sandbox.Check {
			path := pick(o.Image())
			c := sandbox.CheckReadable(name, path, o.imageFix())
			if path == "" {
				c.Info = "no guest image under " + o.ImageDir()
			}
			if c.OK && name == qemu.CheckKernel {
				c.Info += kernelKind(path, accel.Detect().Accel, guestimage.CompiledKernel(o.ImageDir()))
			}
			return c
		}}
	}
	return []Check{
		check(qemu.CheckKernel, func(k, _ string) string { return k }),
		check(qemu.CheckInitrd, func(_, i string) string { return i }),
		{Name: CheckGuestAgent, Fix: o.buildImage, Run: o.checkGuestAgent},
	}
}

// kernelKind says how the kernel finds its devices, which decides whether
// guests boot with ACPI; under emulation it points at the small kernel,
// whose cold boots take less than half the time (docs/BENCHMARKS.md): the
// one compiled already (compiled, CompiledKernel) when there is one.
func kernelKind(kernel string, a accel.Kind, compiled string) string {
	if ok, _ := guestimage.CmdlineDevices(kernel); ok {
		return ": drivers built in, devices on the command line, no ACPI"
	}
	switch {
	case a != accel.TCG:
		return ": devices through ACPI"
	case compiled != "":
		return ": devices through ACPI; under emulation nex's small kernel boots faster, and one is compiled (" +
			compiled + "): nex rootfs build puts it in a new image"
	default:
		return ": devices through ACPI; under emulation nex's small kernel boots faster (nex rootfs kernel)"
	}
}

// checkGuestAgent warns when the newest image's /init is another build of
// nex than this one, as after an upgrade until an image is built again: the
// node would boot guests whose agent may not speak its protocol. A warning,
// not a failure: builds of the same source with other flags (go run, CGO)
// differ too.
func (o Options) checkGuestAgent(context.Context) sandbox.Check {
	c := sandbox.Check{Name: CheckGuestAgent, Fix: o.imageFix()}
	if o.Kernel != "" || o.Initrd != "" {
		c.OK, c.Info, c.Fix = true, "configured image files (kernel_filepath, rootfs_filepath): not checked", ""
		return c
	}
	_, initrd := o.Image()
	if initrd == "" {
		c.OK, c.Info, c.Fix = true, "no image yet (see the initramfs check)", ""
		return c
	}
	agent := o.Agent
	if agent == "" {
		var err error
		if agent, err = os.Executable(); err != nil {
			c.Info = err.Error()
			return c
		}
	}
	own, err := guestimage.GoBuildID(agent)
	if err != nil {
		c.Info = "cannot tell this nex's build: " + err.Error()
		return c
	}
	switch got := guestimage.ImageAgentID(filepath.Dir(initrd)); got {
	case own:
		c.OK, c.Info, c.Fix = true, "the image's /init is this nex", ""
	case "":
		c.OK, c.Fix = true, ""
		c.Info = "the image predates agent records; `nex rootfs build` makes one from this nex"
	default:
		c.OK, c.Warning = true, true
		c.Info = fmt.Sprintf("the image's /init is another nex build (%s; this is %s): after an upgrade, rebuild the image", short(got), short(own))
	}
	return c
}

// short is the first part of a Go build ID, enough to tell two apart.
func short(id string) string {
	if i := strings.IndexByte(id, '/'); i > 0 {
		return id[:i]
	}
	return id
}

// imageFix names the data dir, so the image lands where this node looks.
func (o Options) imageFix() string {
	if o.Kernel != "" || o.Initrd != "" {
		return "fix kernel_filepath/rootfs_filepath in the config, or remove them to use the built image"
	}
	return fmt.Sprintf("nex rootfs build --data-dir %s (or: nex node preflight --sandbox %s --data-dir %s --yes)",
		o.DataDir, o.Sandbox, o.DataDir)
}

// Image returns the guest image to boot: the configured files, or the
// newest complete image under ImageDir ("", "" when there is none).
func (o Options) Image() (kernel, initrd string) {
	if o.Kernel != "" || o.Initrd != "" {
		return o.Kernel, o.Initrd
	}
	for _, dir := range guestimage.Images(o.ImageDir()) {
		if initrd := filepath.Join(dir, guestimage.InitrdFile); func() bool { _, err := os.Stat(initrd); return err == nil }() {
			return filepath.Join(dir, guestimage.KernelFile), initrd
		}
	}
	return "", ""
}

// buildImage is the image checks' fix: what `nex rootfs build` does.
func (o Options) buildImage(ctx context.Context, w io.Writer) error {
	if o.Kernel != "" || o.Initrd != "" {
		return fmt.Errorf("the config names the image files (kernel_filepath, rootfs_filepath); fix those paths or remove them")
	}
	img, err := guestimage.Build(ctx, guestimage.Options{
		CacheDir:          o.ImageDir(),
		UseCompiledKernel: true,
		Agent:             o.Agent,
		Progress:          func(s string) { fmt.Fprintln(w, "  ·", s) },
		Log:               o.Log,
	})
	if err != nil {
		return err
	}
	// Image picks the newest; make sure that is the one just built even
	// when it came from the cache.
	now := time.Now()
	for _, p := range []string{img.Kernel, img.Initrd} {
		_ = os.Chtimes(p, now, now)
	}
	return nil
}

func (o Options) checkQEMU(ctx context.Context) sandbox.Check {
	return qemu.CheckQEMUBinary(ctx, o.QEMUBinary)
}

// checkQEMUBuild has no fix to run: the config names another QEMU build.
func (o Options) checkQEMUBuild(ctx context.Context) sandbox.Check {
	return qemu.CheckQEMUBuild(ctx, o.QEMUBinary, accel.Detect().Accel)
}

// installQEMU is the QEMU check's fix on Debian-like hosts.
func installQEMU(ctx context.Context, w io.Writer) error {
	return guestimage.AptInstall(ctx, w, "qemu-system-x86")
}

// checkAccel always passes for QEMU (TCG works everywhere) and says which
// accelerator a VM gets and why.
func checkAccel(context.Context) sandbox.Check {
	a := accel.Detect()
	return sandbox.Check{OK: true, Info: string(a.Accel) + ": " + a.Reason}
}

// checkKVM is Firecracker's: it runs on KVM only.
func checkKVM(context.Context) sandbox.Check { return firecracker.CheckKVMUsable(accel.Detect()) }

func (o Options) checkFirecracker(context.Context) sandbox.Check {
	name := o.FirecrackerBinary
	if name == "" {
		name = firecracker.DefaultBinary
	}
	bin, err := exec.LookPath(name)
	if err != nil {
		return sandbox.Check{Info: name + " not found in PATH", Fix: firecracker.FixInstall}
	}
	return sandbox.Check{OK: true, Info: bin}
}

func (o Options) checkFreeDisk(context.Context) sandbox.Check {
	// The data dir may not exist yet: measure the nearest existing parent.
	dir := o.DataDir
	for {
		if _, err := os.Stat(dir); err == nil || filepath.Dir(dir) == dir {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return sandbox.Check{Info: fmt.Sprintf("statfs %s: %v", dir, err), Fix: "make the data dir's file system reachable"}
	}
	free := int64(st.Bavail) * int64(st.Bsize) >> 20
	info := fmt.Sprintf("%d MiB free in %s (need %d)", free, dir, o.MinFreeMiB)
	if free < o.MinFreeMiB {
		return sandbox.Check{Info: info, Fix: "free space there, or point --data-dir at a larger file system"}
	}
	return sandbox.Check{OK: true, Info: info}
}

// checkSnapshots says whether VMs are restored from snapshots and, when
// they are, that their templates have a writable home.
func (o Options) checkSnapshots(context.Context) sandbox.Check {
	if !o.Snapshot {
		return sandbox.Check{OK: true, Info: "off (vm_snapshots: false): every VM boots cold, ≈ 3 s each under TCG instead of ≈ 0.4 s for a clone"}
	}
	c := sandbox.CheckWritableDir(qemu.CheckSnapshotDir, o.SnapshotDir())
	if c.OK {
		templates, _ := filepath.Glob(filepath.Join(o.SnapshotDir(), "*", "state.mig"))
		c.Info = fmt.Sprintf("on: %s is writable, %d template(s) saved (one is made per VM size at first start)",
			o.SnapshotDir(), len(templates))
	}
	return c
}

// QEMUConfig is the qemu driver's config for the node o describes: the
// image the checks found, snapshots under SnapshotDir. A node calls it after
// its preflight passed.
func (o Options) QEMUConfig(log *slog.Logger) qemu.Config {
	o = o.withDefaults()
	kernel, initrd := o.Image()
	return qemu.Config{
		QEMUBinary:  o.QEMUBinary,
		Kernel:      kernel,
		Initrd:      initrd,
		Snapshot:    o.Snapshot,
		SnapshotDir: o.SnapshotDir(),
		Log:         log,
	}
}
