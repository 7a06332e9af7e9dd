package guestimage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
)

// kernelFiles is a kernel image and the directory of its modules
// (lib/modules/<version>); Modules may be empty for a kernel with
// everything built in.
type kernelFiles struct {
	Image   string
	Modules string
	Version string
	// Config is the kernel's build configuration, when known.
	Config string
}

// debianKernelMeta is the metapackage that depends on the current cloud
// kernel of the running Debian release for this architecture.
func debianKernelMeta() string { return "linux-image-cloud-" + runtime.GOARCH }

// errSupplyKernel is the advice appended to every failure of the apt path.
const errSupplyKernel = "or supply a kernel yourself with --kernel PATH --modules DIR"

// fetchDebianKernel finds the cloud kernel package with apt-cache, downloads
// it with apt-get into pkgDir and unpacks it there. A package already
// unpacked is reused: its name carries the kernel ABI, so a new kernel is a
// new name.
func fetchDebianKernel(ctx context.Context, pkgDir string, progress func(string)) (kernelFiles, error) {
	if _, err := exec.LookPath("apt-get"); err != nil {
		return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: apt-get not found (this is not a Debian-like host); %s", errSupplyKernel)
	}
	meta := debianKernelMeta()
	dep, err := aptDependency(ctx, meta)
	if err != nil || dep == "" {
		progress("apt: package lists have no " + meta + "; running apt-get update")
		if out, uerr := run(ctx, "", "apt-get", "update"); uerr != nil {
			return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: apt-get update: %w: %s; %s", uerr, tail(out), errSupplyKernel)
		}
		if dep, err = aptDependency(ctx, meta); err != nil || dep == "" {
			return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: apt-cache finds no package that %s depends on (%v); %s", meta, err, errSupplyKernel)
		}
	}
	if err := os.MkdirAll(pkgDir, 0o755); err != nil {
		return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: %w", err)
	}
	// The unsigned package holds the same kernel and modules without the
	// Secure Boot signature, which a VM does not need.
	var errs []error
	for _, pkg := range []string{dep + "-unsigned", dep} {
		kf, err := unpackedKernel(filepath.Join(pkgDir, pkg))
		if err == nil {
			progress("kernel: " + pkg + " (already downloaded)")
			return kf, nil
		}
		progress("kernel: apt-get download " + pkg)
		if out, err := run(ctx, pkgDir, "apt-get", "download", pkg); err != nil {
			errs = append(errs, fmt.Errorf("apt-get download %s: %w: %s", pkg, err, tail(out)))
			continue
		}
		debs, _ := filepath.Glob(filepath.Join(pkgDir, pkg+"_*.deb"))
		if len(debs) == 0 {
			errs = append(errs, fmt.Errorf("apt-get download %s left no .deb in %s", pkg, pkgDir))
			continue
		}
		sort.Strings(debs)
		deb := debs[len(debs)-1]
		progress("kernel: dpkg-deb -x " + filepath.Base(deb))
		tmp, err := os.MkdirTemp(pkgDir, pkg+".tmp-")
		if err != nil {
			return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: %w", err)
		}
		if out, err := run(ctx, "", "dpkg-deb", "-x", deb, tmp); err != nil {
			os.RemoveAll(tmp)
			return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: dpkg-deb -x %s: %w: %s; %s", deb, err, tail(out), errSupplyKernel)
		}
		final := filepath.Join(pkgDir, pkg)
		os.RemoveAll(final)
		if err := os.Rename(tmp, final); err != nil {
			os.RemoveAll(tmp)
			return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: %w", err)
		}
		os.Remove(deb) // the unpacked tree is what is kept
		return unpackedKernel(final)
	}
	return kernelFiles{}, fmt.Errorf("fetch Debian cloud kernel: %w; %s", errors.Join(errs...), errSupplyKernel)
}

// aptDependency returns the package meta depends on, e.g.
// linux-image-cloud-amd64 → linux-image-6.1.0-48-cloud-amd64.
func aptDependency(ctx context.Context, meta string) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", meta)
	if err != nil {
		return "", fmt.Errorf("apt-cache depends %s: %w: %s", meta, err, tail(out))
	}
	for _, l := range strings.Split(string(out), "\n") {
		if d, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(d, "linux-image-") {
			return strings.TrimSpace(d), nil
		}
	}
	return "", nil
}

// unpackedKernel finds boot/vmlinuz-<ver> and lib/modules/<ver> in an
// unpacked kernel package.
func unpackedKernel(root string) (kernelFiles, error) {
	imgs, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return kernelFiles{}, fmt.Errorf("%s: want one boot/vmlinuz-*, found %d", root, len(imgs))
	}
	ver := strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	for _, m := range []string{"lib/modules", "usr/lib/modules"} {
		dir := filepath.Join(root, m, ver)
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			kf := kernelFiles{Image: imgs[0], Modules: dir, Version: ver}
			if c := filepath.Join(root, "boot", "config-"+ver); exists(c) {
				kf.Config = c
			}
			return kf, nil
		}
	}
	return kernelFiles{}, fmt.Errorf("%s: no lib/modules/%s", root, ver)
}

// AptInstall runs apt-get update, then apt-get install -y of pkgs, with
// their output in w.
func AptInstall(ctx context.Context, w io.Writer, pkgs ...string) error {
	for _, args := range [][]string{{"update"}, append([]string{"install", "-y"}, pkgs...)} {
		fmt.Fprintln(w, "  $ apt-get", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("apt-get %s: %w", args[0], err)
		}
	}
	return nil
}

func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	return cmd.CombinedOutput()
}

// tail keeps the end of a command's output for an error message.
func tail(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) > 400 {
		out = append([]byte("…"), out[len(out)-400:]...)
	}
	return string(out)
}
