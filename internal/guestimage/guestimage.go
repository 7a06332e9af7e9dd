// Package guestimage builds the microVM guest image nex boots: an
// uncompressed PVH vmlinux and an uncompressed cpio initramfs holding the nex
// binary as /init plus the virtio modules the kernel needs. Builds are
// reproducible and cached by content hash.
package guestimage

import (
	"context"
	"errors"
	"log/slog"
)

// Options configure Build.
type Options struct {
	// CacheDir holds downloaded packages and built images (<data dir>/images).
	CacheDir string
	// Kernel is a user-supplied kernel (bzImage or vmlinux) with its modules
	// directory in KernelModules; empty: Debian's cloud kernel.
	Kernel        string
	KernelModules string
	// Agent is the binary put in as /init; empty: the running executable.
	Agent string
	// Progress, when set, receives one line per step.
	Progress func(step string)
	Log      *slog.Logger
}

// Image is a built guest image.
type Image struct {
	Kernel  string // uncompressed vmlinux (PVH)
	Initrd  string // uncompressed cpio
	Hash    string // content hash of the inputs
	Modules []string
}

// Build makes (or finds in the cache) the guest image.
func Build(ctx context.Context, o Options) (Image, error) {
	return Image{}, errors.New("guestimage: not written yet")
}
