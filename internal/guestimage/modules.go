package guestimage

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// A moduleWant is a module the guest needs; optional ones are taken when the
// kernel has them. A driver of one virtio device (Device, its virtio id) and
// what only it needs are loaded by init only when the VM has that device, so
// a QEMU guest does not pay for vsock nor a Firecracker guest for
// virtio-serial.
type moduleWant struct {
	name     string
	optional bool
	device   int
	// without says what a guest lacking an optional module cannot do.
	without string
	// builtin is the name the driver carries when built into a kernel, if
	// not the module's name.
	builtin string
}

// Virtio device ids (virtio spec, "Device Types").
const (
	VirtioNet     = 1
	VirtioBlock   = 2
	VirtioConsole = 3
	VirtioVsock   = 19
)

// guestModules are what the agent needs from the kernel: the virtio-mmio
// transport (microvm and Firecracker devices), the network and the
// virtio-serial config channel, vsock for Firecracker, and virtio-blk for
// the stage disk of QEMU's file port (without it files come over the port). The transport
// comes first: init can only see which devices exist once it is loaded.
var guestModules = []moduleWant{
	{name: "virtio_mmio", builtin: "virtio-mmio"}, // its platform driver's name
	{name: "virtio_net", device: VirtioNet},
	{name: "virtio_console", device: VirtioConsole},
	{name: "vmw_vsock_virtio_transport", optional: true, device: VirtioVsock,
		without: "Firecracker sandboxes (vsock) will not reach the node"},
	{name: "virtio_blk", optional: true, device: VirtioBlock,
		without: "QEMU sandboxes get files through the file port's slower stream instead of the stage disk"},
}

// Module is one loadable kernel module of the guest.
type Module struct {
	Name string // normalised: dashes become underscores
	Path string // file on the host (.ko, .ko.xz, .ko.zst, .ko.gz)
	// Device, when not 0, is the virtio device id without which the guest
	// need not load the module.
	Device int
}

// OrderLine is the module's line in ModuleOrder: its file name, then
// "virtio=<id>" when it is needed only with that device.
func (m Module) OrderLine() string {
	if m.Device == 0 {
		return m.File()
	}
	return fmt.Sprintf("%s virtio=%d", m.File(), m.Device)
}

// File is the module's file name inside the initramfs.
func (m Module) File() string { return m.Name + moduleExt(m.Path) }

// moduleSuffixes are the file endings of modules, compressed or not.
var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

func moduleExt(path string) string {
	for _, s := range moduleSuffixes[1:] {
		if strings.HasSuffix(path, s) {
			return s
		}
	}
	return ".ko"
}

func moduleName(path string) (string, bool) {
	base := filepath.Base(path)
	for _, s := range moduleSuffixes {
		if strings.HasSuffix(base, s) {
			return strings.ReplaceAll(strings.TrimSuffix(base, s), "-", "_"), true
		}
	}
	return "", false
}

// moduleIndex knows where each module of a kernel is and what it depends on.
// It reads modules.dep when there is one; a kernel package as shipped has
// none (depmod writes it at install time), so then the dependencies come from
// each needed module's own .modinfo section.
type moduleIndex struct {
	dir     string
	path    map[string]string   // name → path relative to dir
	deps    map[string][]string // from modules.dep; nil: read .modinfo
	builtin map[string]bool
}

func loadModuleIndex(dir string) (*moduleIndex, error) {
	ix := &moduleIndex{dir: dir, path: map[string]string{}, builtin: map[string]bool{}}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(b)) {
			if n, ok := moduleName(l); ok {
				ix.builtin[n] = true
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.dep")); err == nil {
		ix.deps = map[string][]string{}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			mod, rest, ok := strings.Cut(sc.Text(), ":")
			n, isMod := moduleName(mod)
			if !ok || !isMod {
				continue
			}
			ix.path[n] = mod
			var deps []string
			for _, d := range strings.Fields(rest) {
				if dn, ok := moduleName(d); ok {
					deps = append(deps, dn)
				}
			}
			ix.deps[n] = deps
		}
		return ix, nil
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if n, ok := moduleName(p); ok && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			if _, dup := ix.path[n]; !dup {
				ix.path[n] = rel
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan modules %s: %w", dir, err)
	}
	return ix, nil
}

func (ix *moduleIndex) depsOf(name string) ([]string, error) {
	if ix.deps != nil {
		return ix.deps[name], nil
	}
	b, err := readModule(filepath.Join(ix.dir, ix.path[name]))
	if err != nil {
		return nil, err
	}
	return modinfoDepends(b)
}

// resolve returns the wanted modules and everything they depend on, each
// after its dependencies, and marks those needed only for one virtio
// device. Modules built into the kernel are left out.
func (ix *moduleIndex) resolve(want []moduleWant) ([]Module, error) {
	var out []Module
	state := map[string]int{}            // 1 visiting, 2 done
	deps := map[string][]string{}        // of done modules
	devices := map[string]map[int]bool{} // module → devices of the wants that need it
	var visit func(name string, device int, chain []string) error
	visit = func(name string, device int, chain []string) error {
		if ix.builtin[name] {
			return nil
		}
		if state[name] == 1 {
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		}
		if state[name] == 2 && devices[name][device] {
			return nil
		}
		if devices[name] == nil {
			devices[name] = map[int]bool{}
		}
		devices[name][device] = true
		if state[name] == 2 { // already placed; its dependencies learn the device too
			for _, d := range deps[name] {
				if err := visit(d, device, append(chain, name)); err != nil {
					return err
				}
			}
			return nil
		}
		if _, ok := ix.path[name]; !ok {
			return fmt.Errorf("module %s is needed by %s but is neither in %s nor built in",
				name, strings.Join(chain, " → "), ix.dir)
		}
		state[name] = 1
		ds, err := ix.depsOf(name)
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		for _, d := range ds {
			if err := visit(d, device, append(chain, name)); err != nil {
				return err
			}
		}
		state[name], deps[name] = 2, ds
		out = append(out, Module{Name: name, Path: filepath.Join(ix.dir, ix.path[name])})
		return nil
	}
	for _, w := range want {
		_, present := ix.path[w.name]
		if w.optional && !present && !ix.builtin[w.name] {
			continue
		}
		if !present && !ix.builtin[w.name] {
			return nil, fmt.Errorf("kernel modules in %s have no %s (neither a module nor built in); supply a kernel that has it", ix.dir, w.name)
		}
		if err := visit(w.name, w.device, []string{"guest"}); err != nil {
			return nil, err
		}
	}
	// A module needed regardless of devices, or by drivers of two different
	// devices, is always loaded.
	for i, m := range out {
		if ds := devices[m.Name]; len(ds) == 1 && !ds[0] {
			for d := range ds {
				out[i].Device = d
			}
		}
	}
	return out, nil
}

// readModule returns a module's ELF bytes, decompressing by file name.
func readModule(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var r io.Reader = f
	switch moduleExt(path) {
	case ".ko.xz":
		if r, err = xz.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case ".ko.zst":
		d, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		defer d.Close()
		r = d
	case ".ko.gz":
		if r, err = gzip.NewReader(f); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	b, err := io.ReadAll(io.LimitReader(r, 256<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// modinfoDepends reads the "depends=" entry of a module's .modinfo section
// (NUL-separated key=value strings).
func modinfoDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("not an ELF module: %w", err)
	}
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, fmt.Errorf(".modinfo: %w", err)
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, strings.ReplaceAll(d, "-", "_"))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// ModuleLine is one line of ModuleOrder, as init reads it.
type ModuleLine struct {
	File   string // inside ModulesDir
	Device int    // virtio device id the module is for; 0: always load
}

// ParseModuleOrder reads ModuleOrder.
func ParseModuleOrder(b []byte) ([]ModuleLine, error) {
	var out []ModuleLine
	for i, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		ml := ModuleLine{File: f[0]}
		for _, opt := range f[1:] {
			v, ok := strings.CutPrefix(opt, "virtio=")
			id, err := strconv.Atoi(v)
			if !ok || err != nil || id <= 0 {
				return nil, fmt.Errorf("module order line %d: bad option %q", i+1, opt)
			}
			ml.Device = id
		}
		if strings.ContainsRune(ml.File, '/') {
			return nil, fmt.Errorf("module order line %d: %q is not a file name", i+1, ml.File)
		}
		out = append(out, ml)
	}
	return out, nil
}

// moduleSigMagic ends a module that carries an appended signature.
const moduleSigMagic = "~Module signature appended~\n"

// stripSignature drops a module's appended signature: the signature, then
// a 12-byte struct module_signature whose last four bytes are its length
// (big-endian), then moduleSigMagic. A module without one comes back as it
// is.
//
// Under TCG, checking the signatures (SHA-256 of each module, an RSA-4096
// verification each) costs the guest ≈ 30 M instructions, ≈ 60 ms of every
// boot, for the seven modules of a QEMU guest. They come from the package
// the kernel came from, so the check proves nothing the image build does
// not; a kernel that does not require signatures loads them unsigned (and
// marks itself tainted, which changes nothing here).
func stripSignature(ko []byte) ([]byte, error) {
	rest, ok := bytes.CutSuffix(ko, []byte(moduleSigMagic))
	if !ok {
		return ko, nil
	}
	const infoLen = 12
	if len(rest) < infoLen {
		return nil, errors.New("module signature: truncated")
	}
	n := uint64(binary.BigEndian.Uint32(rest[len(rest)-4:]))
	rest = rest[:len(rest)-infoLen]
	if n > uint64(len(rest)) {
		return nil, fmt.Errorf("module signature: length %d exceeds the module", n)
	}
	return rest[:uint64(len(rest))-n], nil
}

// signaturesOptional reports whether the kernel built with the config at
// path loads unsigned modules (CONFIG_MODULE_SIG_FORCE unset). Unknown
// (no config): false.
func signaturesOptional(path string) bool {
	if path == "" {
		return false
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(l) == "CONFIG_MODULE_SIG_FORCE=y" {
			return false
		}
	}
	return true
}
