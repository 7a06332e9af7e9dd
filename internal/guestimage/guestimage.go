// Package guestimage builds the microVM guest image nex boots: an
// uncompressed PVH vmlinux and an uncompressed cpio initramfs holding the nex
// binary as /init plus the virtio modules the kernel needs. Builds are
// reproducible and cached by content hash.
package guestimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nex-engine/nex/internal/guestimage/cpio"
)

// builderVersion is part of every image hash; bump it when the layout of the
// initramfs or the way it is made changes, so old cache entries are not
// reused.
const builderVersion = "nex-guestimage/2"

// File names inside an image's cache directory, and paths inside the
// initramfs that vminit relies on.
const (
	KernelFile = "vmlinux"
	InitrdFile = "initrd.cpio"
	// ModulesDir holds the modules in the initramfs; ModuleOrder lists them
	// in load order, one a line (see Module.OrderLine).
	ModulesDir  = "modules"
	ModuleOrder = "modules/order"
)

// Options configure Build.
type Options struct {
	// CacheDir holds downloaded packages and built images (<data dir>/images).
	CacheDir string
	// PackageDir holds downloaded kernel packages; empty: CacheDir/pkgs.
	PackageDir string
	// Kernel is a user-supplied kernel (bzImage or vmlinux) with its modules
	// directory in KernelModules; empty: Debian's cloud kernel, or with
	// UseCompiledKernel the newest one BuildKernel compiled into CacheDir.
	Kernel        string
	KernelModules string
	// UseCompiledKernel prefers, when Kernel is empty, nex's small kernel
	// (CompiledKernel) to Debian's: once `nex rootfs kernel` has compiled it,
	// images built after (a rebuild after an upgrade too) keep it.
	UseCompiledKernel bool
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
	// KernelVersion is the kernel's release (e.g. 6.1.0-48-cloud-amd64) when
	// known from its package or modules directory.
	KernelVersion string
	// Cached is set when the image was found rather than built.
	Cached bool
}

// Build makes (or finds in the cache) the guest image.
func Build(ctx context.Context, o Options) (Image, error) {
	if o.CacheDir == "" {
		return Image{}, errors.New("guest image: cache dir is empty")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	progress := func(s string) {
		o.Log.Debug("guest image", "step", s)
		if o.Progress != nil {
			o.Progress(s)
		}
	}

	kf, err := o.kernelFiles(ctx, progress)
	if err != nil {
		return Image{}, err
	}
	kernel, err := os.ReadFile(kf.Image)
	if err != nil {
		return Image{}, fmt.Errorf("guest image: read kernel: %w", err)
	}
	agentPath := o.Agent
	if agentPath == "" {
		if agentPath, err = os.Executable(); err != nil {
			return Image{}, fmt.Errorf("guest image: find own executable for /init: %w", err)
		}
	}
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return Image{}, fmt.Errorf("guest image: read agent: %w", err)
	}
	if err := checkStatic(agentPath, agent); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	agentID := agentBuildID(agent) // before stripping drops the section table
	size := len(agent)
	if agent, err = stripForGuest(agent); err != nil {
		return Image{}, fmt.Errorf("guest image: agent %s: %w", agentPath, err)
	}
	progress(fmt.Sprintf("agent: %s (%d MiB, %d MiB stripped)", agentPath, size>>20, len(agent)>>20))

	var mods []Module
	if kf.Modules == "" {
		progress("modules: none given; the kernel must have the guest's drivers built in")
	} else {
		ix, err := loadModuleIndex(kf.Modules)
		if err != nil {
			return Image{}, fmt.Errorf("guest image: %w", err)
		}
		if mods, err = ix.resolve(guestModules); err != nil {
			return Image{}, fmt.Errorf("guest image: %w", err)
		}
	}
	modData := make([][]byte, len(mods))
	var modNames []string
	unsigned := signaturesOptional(kf.Config)
	for i, m := range mods {
		if modData[i], err = os.ReadFile(m.Path); err != nil {
			return Image{}, fmt.Errorf("guest image: read module: %w", err)
		}
		if unsigned && moduleExt(m.Path) == ".ko" {
			if modData[i], err = stripSignature(modData[i]); err != nil {
				return Image{}, fmt.Errorf("guest image: module %s: %w", m.Path, err)
			}
		}
		modNames = append(modNames, m.File())
	}
	if len(modNames) > 0 {
		progress("modules: " + strings.Join(modNames, " "))
	}
	if unsigned && len(modNames) > 0 {
		progress("modules: signatures dropped (the kernel does not require them; checking them is slow under emulation)")
	}

	hash := imageHash(kernel, agent, modNames, modData)
	img := Image{
		Kernel:        filepath.Join(o.CacheDir, hash, KernelFile),
		Initrd:        filepath.Join(o.CacheDir, hash, InitrdFile),
		Hash:          hash,
		Modules:       modNames,
		KernelVersion: kf.Version,
	}
	if exists(img.Kernel) && exists(img.Initrd) {
		img.Cached = true
		recordAgentID(filepath.Dir(img.Kernel), agentID)
		progress("image: " + hash + " (cached)")
		return img, nil
	}

	progress("vmlinux: extracting the uncompressed kernel")
	vmlinux, err := Vmlinux(kernel)
	if err != nil {
		return Image{}, fmt.Errorf("guest image: kernel %s: %w", kf.Image, err)
	}
	machine, err := sameMachine(vmlinux, agent)
	if err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	if kf.Modules == "" {
		// Without this a guest would boot and wait for devices it cannot
		// drive until the node's boot timeout.
		required, optional := missingBuiltins(vmlinux)
		if len(required) > 0 {
			return Image{}, fmt.Errorf("guest image: kernel %s lacks built-in %s and no modules were given "+
				"(fix: give its modules with --modules DIR, or build nex's kernel with nex rootfs kernel)",
				kf.Image, strings.Join(required, ", "))
		}
		if len(optional) > 0 {
			progress("kernel: no built-in " + strings.Join(optional, "; "))
		}
	}
	var initrd bytes.Buffer
	if err := writeInitramfs(&initrd, agent, machine, mods, modData); err != nil {
		return Image{}, fmt.Errorf("guest image: initramfs: %w", err)
	}
	progress(fmt.Sprintf("initramfs: %d MiB, vmlinux: %d MiB", initrd.Len()>>20, len(vmlinux)>>20))
	if err := store(filepath.Join(o.CacheDir, hash), map[string][]byte{KernelFile: vmlinux, InitrdFile: initrd.Bytes()}); err != nil {
		return Image{}, fmt.Errorf("guest image: %w", err)
	}
	recordAgentID(filepath.Dir(img.Kernel), agentID)
	progress("image: " + hash)
	pruneImages(o.CacheDir, keepImages, o.Log)
	return img, nil
}

// keepImages is how many built images the cache keeps: every nex upgrade
// builds a new one (its /init is the new nex), and a node uses the newest,
// so older ones are only wanted by a node that has not restarted since.
const keepImages = 4

// Images lists the image directories in cacheDir (those holding a kernel;
// downloaded packages do not), newest first by their kernel file: a node boots the
// first that also has its initramfs.
func Images(cacheDir string) []string {
	type image struct {
		dir string
		mod time.Time
	}
	var images []image
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		if !e.IsDir() || strings.Contains(e.Name(), ".tmp-") { // a build under way (store)
			continue
		}
		dir := filepath.Join(cacheDir, e.Name())
		st, err := os.Stat(filepath.Join(dir, KernelFile))
		if err != nil {
			continue // incomplete: store replaces it
		}
		images = append(images, image{dir, st.ModTime()})
	}
	slices.SortFunc(images, func(a, b image) int { return b.mod.Compare(a.mod) })
	dirs := make([]string, len(images))
	for i, im := range images {
		dirs[i] = im.dir
	}
	return dirs
}

// pruneImages deletes all but the keep newest images in cacheDir, so
// upgrades do not pile up ≈ 70 MB each.
func pruneImages(cacheDir string, keep int, log *slog.Logger) {
	images := Images(cacheDir)
	if len(images) <= keep {
		return
	}
	for _, dir := range images[keep:] {
		if err := os.RemoveAll(dir); err != nil {
			log.Warn("guest image: removing an old image failed", "dir", dir, "error", err)
			continue
		}
		log.Info("guest image: removed an old image", "dir", dir)
	}
}

func (o Options) kernelFiles(ctx context.Context, progress func(string)) (kernelFiles, error) {
	if o.Kernel == "" {
		if o.KernelModules != "" {
			return kernelFiles{}, errors.New("guest image: a modules dir was given without --kernel")
		}
		if o.UseCompiledKernel {
			if k := CompiledKernel(o.CacheDir); k != "" {
				progress("kernel: " + k + " (nex's small kernel, compiled by nex rootfs kernel)")
				return kernelFiles{Image: k}, nil
			}
		}
		pkgs := o.PackageDir
		if pkgs == "" {
			pkgs = filepath.Join(o.CacheDir, "pkgs")
		}
		return fetchDebianKernel(ctx, pkgs, progress)
	}
	if !exists(o.Kernel) {
		return kernelFiles{}, fmt.Errorf("guest image: kernel %s: no such file", o.Kernel)
	}
	kf := kernelFiles{Image: o.Kernel, Modules: o.KernelModules}
	if o.KernelModules != "" {
		if st, err := os.Stat(o.KernelModules); err != nil || !st.IsDir() {
			return kernelFiles{}, fmt.Errorf("guest image: modules dir %s: not a directory", o.KernelModules)
		}
		kf.Version = filepath.Base(o.KernelModules)
	}
	progress("kernel: " + o.Kernel)
	return kf, nil
}

// imageHash names an image by everything that goes into it.
func imageHash(kernel, agent []byte, modNames []string, modData [][]byte) string {
	h := sha256.New()
	field := func(label string, b []byte) {
		sum := sha256.Sum256(b)
		fmt.Fprintf(h, "%s %x\n", label, sum)
	}
	fmt.Fprintln(h, builderVersion)
	field("kernel", kernel)
	field("agent", agent)
	for i, n := range modNames {
		field("module "+n, modData[i])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// writeInitramfs writes the guest's root file system, for an agent built for
// machine. Entries are sorted by path, which puts every directory before
// what it holds.
func writeInitramfs(w *bytes.Buffer, agent []byte, machine elf.Machine, mods []Module, modData [][]byte) error {
	var order strings.Builder
	recs := []cpio.Record{
		cpio.Dir("dev", 0o755),
		// The kernel opens /dev/console for init's stdin/out/err before
		// devtmpfs is mounted, so the node must be in the archive.
		cpio.CharDev("dev/console", 0o600, 5, 1),
		cpio.Dir("etc", 0o755),
		cpio.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n")),
		cpio.File("init", 0o755, agent),
		cpio.Dir(ModulesDir, 0o755),
		cpio.Dir("proc", 0o555),
		cpio.Dir("run", 0o755),
		cpio.Dir("sys", 0o555),
		cpio.Dir("tmp", 0o1777),
	}
	if machine == elf.EM_X86_64 {
		recs = append(recs, cpio.Dir("bin", 0o755), cpio.File(RehearsalFile, 0o755, rehearsalELF()))
	}
	for i, m := range mods {
		recs = append(recs, cpio.File(ModulesDir+"/"+m.File(), 0o644, modData[i]))
		order.WriteString(m.OrderLine() + "\n")
	}
	recs = append(recs, cpio.File(ModuleOrder, 0o644, []byte(order.String())))
	sort.Slice(recs, func(i, j int) bool { return recs[i].Name < recs[j].Name })
	cw := cpio.NewWriter(w)
	for _, r := range recs {
		if err := cw.WriteRecord(r); err != nil {
			return err
		}
	}
	return cw.Close()
}

// checkStatic refuses an agent that needs a dynamic loader: the initramfs has
// no libc.
func checkStatic(path string, b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("agent %s is not an ELF executable: %w", path, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("agent %s is dynamically linked; build nex with CGO_ENABLED=0", path)
		}
	}
	return nil
}

// sameMachine checks that the kernel and the agent are built for the same
// machine, and returns it.
func sameMachine(vmlinux, agent []byte) (elf.Machine, error) {
	k, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return 0, err
	}
	a, err := elf.NewFile(bytes.NewReader(agent))
	if err != nil {
		return 0, err
	}
	if k.Machine != a.Machine {
		return 0, fmt.Errorf("agent is built for %v but the kernel for %v", a.Machine, k.Machine)
	}
	return a.Machine, nil
}

// store writes files into dir atomically: into a temporary sibling first,
// renamed into place, so a crash or a concurrent build never leaves a half
// image under its hash.
func store(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(tmp, name), b, 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	complete := func() bool { return exists(filepath.Join(dir, KernelFile)) && exists(filepath.Join(dir, InitrdFile)) }
	if !complete() {
		os.RemoveAll(dir) // a partial leftover, e.g. files deleted by hand
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another build of the same inputs got there first.
		if complete() {
			return nil
		}
		return fmt.Errorf("store image: %w", err)
	}
	return nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
