package guestimage

import (
	"bufio"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// KernelConfig is the guest kernel's configuration: merged onto the kernel
// source's tinyconfig by BuildKernel. It builds in everything a nex guest
// uses and nothing else: under emulation a guest reaches /init in
// 0.85–1.6 s instead of 1.7–1.8 s on Debian's cloud kernel, with no modules
// to load after (docs/BENCHMARKS.md).
//
//go:embed kernel.config
var KernelConfig string

// kernelRecipe is part of every kernel's cache key: bump it when the way the
// kernel is built (not its configuration, which is hashed) changes.
const kernelRecipe = "nex-kernel/1"

// KernelsDir is where built kernels are kept, under the image cache.
const KernelsDir = "kernels"

// CompiledKernel is the newest kernel BuildKernel compiled into cacheDir
// (by its file's time), or "" when there is none.
func CompiledKernel(cacheDir string) string {
	entries, _ := os.ReadDir(filepath.Join(cacheDir, KernelsDir))
	var newest string
	var newestMod time.Time
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") { // .build-*: a build under way
			continue
		}
		p := filepath.Join(cacheDir, KernelsDir, e.Name(), KernelFile)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.ModTime().After(newestMod) {
			newest, newestMod = p, st.ModTime()
		}
	}
	return newest
}

// KernelPackages are the Debian packages BuildKernel needs: the source and
// the tools its build runs (objtool needs libelf's headers).
var KernelPackages = []string{"linux-source", "make", "gcc", "libc6-dev", "flex", "bison", "bc", "libelf-dev", "xz-utils"}

// KernelOptions configure BuildKernel.
type KernelOptions struct {
	// CacheDir is the image cache (<data dir>/images); kernels go under
	// CacheDir/kernels/<key>/vmlinux.
	CacheDir string
	// Source is a kernel source tarball; empty: the newest
	// /usr/src/linux-source-*.tar.* (Debian's linux-source package).
	Source string
	// Jobs is make's -j; 0: one more than the CPUs.
	Jobs int
	// Progress, when set, receives one line per step.
	Progress func(string)
}

// BuildKernel compiles the guest kernel from a Linux source tarball with
// KernelConfig and returns the path of its vmlinux (uncompressed, PVH). A
// kernel built before from the same source and configuration is returned
// at once. The build needs a C toolchain (KernelPackages) and takes a few
// minutes on two cores.
func BuildKernel(ctx context.Context, o KernelOptions) (string, error) {
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	src := o.Source
	if src == "" {
		var err error
		if src, err = DefaultKernelSource(); err != nil {
			return "", err
		}
	}
	key, err := kernelKey(src)
	if err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	dir := filepath.Join(o.CacheDir, KernelsDir, key)
	out := filepath.Join(dir, KernelFile)
	if exists(out) {
		// Images built after take the newest compiled kernel
		// (CompiledKernel): this one, asked for last.
		now := time.Now()
		_ = os.Chtimes(out, now, now)
		progress("kernel: " + out + " (cached)")
		return out, nil
	}
	if missing := MissingKernelTools(); len(missing) > 0 {
		return "", fmt.Errorf("guest kernel: %s not found (fix: apt-get install -y %s)",
			strings.Join(missing, ", "), strings.Join(KernelPackages, " "))
	}
	progress("source: " + src)

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	// The build tree (≈ 1.3 GB) is only needed until vmlinux is out of it.
	build, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	defer os.RemoveAll(build)

	progress("unpacking the source")
	if out, err := run(ctx, build, "tar", "-xf", src, "--strip-components=1"); err != nil {
		return "", fmt.Errorf("guest kernel: unpack %s: %w: %s", src, err, tail(out))
	}
	if err := applyKernelEdits(build, kernelEdits); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	progress("configuring: tinyconfig + nex's kernel.config")
	if err := configureKernel(ctx, build); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	jobs := o.Jobs
	if jobs <= 0 {
		jobs = runtime.NumCPU() + 1
	}
	// The log stays next to the kernel, for a build that failed too.
	logPath := filepath.Join(dir, "build.log")
	progress(fmt.Sprintf("compiling vmlinux with %d jobs", jobs))
	if err := makeKernel(ctx, build, jobs, logPath, progress); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	built := filepath.Join(build, "vmlinux")
	vmlinux, err := os.ReadFile(built)
	if err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	if !isCompleteELF(vmlinux) {
		return "", errors.New("guest kernel: the build's vmlinux is not a complete ELF file")
	}
	// The build tree is on the cache's file system: a rename puts the
	// whole file in place at once.
	if err := os.Chmod(built, 0o644); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	if err := os.Rename(built, out); err != nil {
		return "", fmt.Errorf("guest kernel: %w", err)
	}
	progress(fmt.Sprintf("kernel: %s (%d MiB)", out, len(vmlinux)>>20))
	return out, nil
}

// DefaultKernelSource is the newest tarball Debian's linux-source package
// installed under /usr/src.
func DefaultKernelSource() (string, error) {
	found, _ := filepath.Glob("/usr/src/linux-source-*.tar.*")
	if len(found) == 0 {
		return "", fmt.Errorf("guest kernel: no kernel source in /usr/src (fix: apt-get install -y %s, or give a tarball with --source)",
			strings.Join(KernelPackages, " "))
	}
	slices.SortFunc(found, compareVersionedNames)
	return found[len(found)-1], nil
}

// compareVersionedNames orders linux-source-6.1.tar.xz before
// linux-source-6.12.tar.xz: digit runs compare as numbers.
func compareVersionedNames(a, b string) int {
	for a != "" && b != "" {
		da, db := leadingDigits(a), leadingDigits(b)
		if da != "" && db != "" {
			if c := len(strings.TrimLeft(da, "0")) - len(strings.TrimLeft(db, "0")); c != 0 {
				return c
			}
			if c := strings.Compare(strings.TrimLeft(da, "0"), strings.TrimLeft(db, "0")); c != 0 {
				return c
			}
			a, b = a[len(da):], b[len(db):]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func leadingDigits(s string) string {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return s[:i]
}

// MissingKernelTools lists the programs and headers a kernel build needs
// that this host lacks.
func MissingKernelTools() []string {
	var missing []string
	for _, t := range []string{"make", "gcc", "flex", "bison", "bc", "tar", "xz"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if !exists("/usr/include/gelf.h") {
		missing = append(missing, "libelf headers (gelf.h)")
	}
	return missing
}

// kernelKey names a kernel by what it is built from: the source tarball's
// bytes, nex's edits of it, the configuration and the recipe.
func kernelKey(src string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("kernel source: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", kernelRecipe, KernelConfig)
	hashKernelEdits(h, kernelEdits)
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("kernel source %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// kernelEnv makes the build reproducible (no host, user or time in the
// image) and keeps its language C.
func kernelEnv() []string {
	return append(os.Environ(), "LC_ALL=C", "ARCH=x86_64",
		"KBUILD_BUILD_TIMESTAMP=1970-01-01 00:00:00 UTC", "KBUILD_BUILD_USER=nex", "KBUILD_BUILD_HOST=nex",
		"KBUILD_BUILD_VERSION=1")
}

func runKernelMake(ctx context.Context, dir string, w io.Writer, args ...string) error {
	cmd := exec.CommandContext(ctx, "make", args...)
	cmd.Dir = dir
	cmd.Env = kernelEnv()
	cmd.Stdout, cmd.Stderr = w, w
	return cmd.Run()
}

// configureKernel writes .config: tinyconfig, then KernelConfig appended
// (a later line for a symbol overrides an earlier one) and resolved with
// olddefconfig. Every option KernelConfig wants built in must have stayed
// so: a source whose Kconfig refuses one (a dependency missing from this
// version) fails here by name rather than booting a guest without it.
func configureKernel(ctx context.Context, dir string) error {
	var log strings.Builder
	if err := runKernelMake(ctx, dir, &log, "tinyconfig"); err != nil {
		return fmt.Errorf("make tinyconfig: %w: %s", err, tail([]byte(log.String())))
	}
	f, err := os.OpenFile(filepath.Join(dir, ".config"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := io.WriteString(f, "\n"+KernelConfig); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	log.Reset()
	if err := runKernelMake(ctx, dir, &log, "olddefconfig"); err != nil {
		return fmt.Errorf("make olddefconfig: %w: %s", err, tail([]byte(log.String())))
	}
	got, err := os.ReadFile(filepath.Join(dir, ".config"))
	if err != nil {
		return err
	}
	return checkKernelConfig(KernelConfig, string(got))
}

// checkKernelConfig names the options want sets to y (or leaves unset)
// that the resolved config has otherwise.
func checkKernelConfig(want, got string) error {
	have := parseKernelConfig(got)
	var bad []string
	shown := func(v string) string {
		if v == "" {
			return "not set"
		}
		return v
	}
	for sym, v := range parseKernelConfig(want) {
		if have[sym] != v {
			bad = append(bad, fmt.Sprintf("%s is %s, want %s", sym, shown(have[sym]), shown(v)))
		}
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return fmt.Errorf("this kernel source cannot be configured as nex's guest needs: %s", strings.Join(bad, "; "))
	}
	return nil
}

// parseKernelConfig maps each symbol of a .config to its value, "" for
// "# CONFIG_X is not set". Later lines win, as in Kconfig.
func parseKernelConfig(s string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if sym, ok := strings.CutPrefix(l, "# "); ok {
			if sym, ok = strings.CutSuffix(sym, " is not set"); ok && strings.HasPrefix(sym, "CONFIG_") {
				m[sym] = ""
			}
			continue
		}
		if sym, v, ok := strings.Cut(l, "="); ok && strings.HasPrefix(sym, "CONFIG_") {
			m[sym] = v
		}
	}
	return m
}

// makeKernel runs make vmlinux with its output in logPath, reporting how
// many files it has compiled every 30 s.
func makeKernel(ctx context.Context, dir string, jobs int, logPath string, progress func(string)) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := runKernelMake(ctx, dir, pw, fmt.Sprintf("-j%d", jobs), "vmlinux")
		pw.Close()
		done <- err
	}()
	compiled, last := 0, time.Now()
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(logf, line)
		if strings.HasPrefix(strings.TrimSpace(line), "CC ") {
			compiled++
		}
		if time.Since(last) >= 30*time.Second {
			progress(fmt.Sprintf("compiling: %d files so far", compiled))
			last = time.Now()
		}
	}
	scanErr := sc.Err()
	if scanErr != nil {
		io.Copy(logf, pr) // keep the rest for the log, and let make finish
	}
	if err := <-done; err != nil {
		b, _ := os.ReadFile(logPath)
		return fmt.Errorf("make vmlinux: %w (log %s): %s", err, logPath, tail(b))
	}
	return errors.Join(scanErr, logf.Sync())
}
