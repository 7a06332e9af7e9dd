package cli

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/nex-engine/nex/internal/guestimage"
	"github.com/nex-engine/nex/internal/node/config"
)

// RootfsCmd groups the guest image commands.
type RootfsCmd struct {
	Build RootfsBuildCmd `cmd:"" help:"build (or find in the cache) the microVM kernel and initramfs"`
}

// RootfsBuildCmd builds the guest image the VM drivers boot.
type RootfsBuildCmd struct {
	Kernel  string `name:"kernel" help:"kernel to boot (bzImage or vmlinux); default: Debian's cloud kernel via apt-get download" type:"existingfile"`
	Modules string `name:"modules" help:"modules directory of --kernel (lib/modules/<version>)" type:"existingdir"`
	Agent   string `name:"agent" help:"static nex binary to put in as /init; default: this executable" type:"existingfile"`
	DataDir string `name:"data-dir" help:"node data directory; images go under <data-dir>/images (default /var/lib/nex as root)" type:"path"`
}

func (c *RootfsBuildCmd) Run(ctx context.Context, g *Globals) error {
	dataDir := c.DataDir
	if dataDir == "" {
		dataDir = config.DefaultDataDir()
	}
	out := g.Stdout()
	img, err := guestimage.Build(ctx, guestimage.Options{
		CacheDir:      filepath.Join(dataDir, "images"),
		Kernel:        c.Kernel,
		KernelModules: c.Modules,
		Agent:         c.Agent,
		Progress:      func(s string) { fmt.Fprintln(g.Stderr(), "·", s) },
		Log:           g.Log(),
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
