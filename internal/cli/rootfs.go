package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/node/config"
)

// RootfsCmd groups the guest image commands.
type RootfsCmd struct {
	Build  RootfsBuildCmd  `cmd:"" help:"build (or find in the cache) the microVM kernel and initramfs"`
	Kernel RootfsKernelCmd `cmd:"" help:"compile nex's small guest kernel from Linux source; later images use it (under emulation a cold boot takes less than half the time of Debian's)"`
}

// RootfsBuildCmd builds the guest image the VM drivers boot.
type RootfsBuildCmd struct {
	Kernel       string `name:"kernel" xor:"kernel" help:"kernel to boot (bzImage or vmlinux); default: the newest kernel nex rootfs kernel compiled, else Debian's cloud kernel via apt-get download" type:"existingfile"`
	DebianKernel bool   `name:"debian-kernel" xor:"kernel" help:"boot Debian's cloud kernel even when nex rootfs kernel has compiled one"`
	Modules      string `name:"modules" help:"modules directory of --kernel (lib/modules/<version>)" type:"existingdir"`
	Agent        string `name:"agent" help:"static nex binary to put in as /init; default: this executable" type:"existingfile"`
	DataDir      string `name:"data-dir" help:"node data directory; images go under <data-dir>/images (default /var/lib/nex as root)" type:"path"`
}

func (c *RootfsBuildCmd) Run(ctx context.Context, g *Globals) error {
	dataDir := orDefaultDataDir(c.DataDir)
	out := g.Stdout()
	img, err := guestimage.Build(ctx, guestimage.Options{
		CacheDir:          filepath.Join(dataDir, "images"),
		Kernel:            c.Kernel,
		KernelModules:     c.Modules,
		UseCompiledKernel: !c.DebianKernel,
		Agent:             c.Agent,
		Progress:          func(s string) { fmt.Fprintln(g.Stderr(), "·", s) },
		Log:               g.Log(),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "kernel:  %s\n", img.Kernel)
	fmt.Fprintf(out, "initrd:  %s\n", img.Initrd)
	fmt.Fprintf(out, "hash:    %s\n", img.Hash)
	if img.KernelVersion != "" {
		fmt.Fprintf(out, "version: %s\n", img.KernelVersion)
	}
	return nil
}

// RootfsKernelCmd compiles the guest kernel of guestimage.KernelConfig.
type RootfsKernelCmd struct {
	Source  string `name:"source" help:"Linux source tarball; default: the newest /usr/src/linux-source-*.tar.* (Debian's linux-source package)" type:"existingfile"`
	Jobs    int    `name:"jobs" short:"j" help:"parallel compile jobs (default: CPUs + 1)"`
	Yes     bool   `name:"yes" short:"y" help:"apt-get install the source and the tools the build needs when they are missing"`
	DataDir string `name:"data-dir" help:"node data directory; kernels go under <data-dir>/images/kernels (default /var/lib/nex as root)" type:"path"`
}

func (c *RootfsKernelCmd) Run(ctx context.Context, g *Globals) error {
	progress := func(s string) { fmt.Fprintln(g.Stderr(), "·", s) }
	if c.Yes {
		if err := installKernelBuildDeps(ctx, g.Stderr(), c.Source == ""); err != nil {
			return err
		}
	}
	dataDir := orDefaultDataDir(c.DataDir)
	vmlinux, err := guestimage.BuildKernel(ctx, guestimage.KernelOptions{
		CacheDir: filepath.Join(dataDir, "images"),
		Source:   c.Source,
		Jobs:     c.Jobs,
		Progress: progress,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(g.Stdout(), "kernel:  %s\n", vmlinux)
	fmt.Fprintf(g.Stdout(), "next:    nex rootfs build --data-dir %s (it picks this kernel; so does nex node preflight --yes)\n", dataDir)
	return nil
}

// installKernelBuildDeps installs what a kernel build lacks: the tools, and
// the source package when no source was given and none is in /usr/src.
func installKernelBuildDeps(ctx context.Context, w io.Writer, wantSource bool) error {
	_, srcErr := guestimage.DefaultKernelSource()
	if len(guestimage.MissingKernelTools()) == 0 && (!wantSource || srcErr == nil) {
		return nil
	}
	return guestimage.AptInstall(ctx, w, guestimage.KernelPackages...)
}

func orDefaultDataDir(d string) string {
	if d == "" {
		return config.DefaultDataDir()
	}
	return d
}
