package guestimage

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/ulikunitz/xz"
)

// fakeKO is a minimal relocatable ELF with a .modinfo section, which is all
// the resolver reads of a module.
func fakeKO(name string, depends ...string) []byte {
	modinfo := []byte("license=GPL\x00depends=" + strings.Join(depends, ",") + "\x00name=" + name + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shsize = 64, 64
	le := binary.LittleEndian
	b := make([]byte, ehsize)
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1
	le.PutUint16(b[16:], 1) // ET_REL
	le.PutUint16(b[18:], 62)
	le.PutUint32(b[20:], 1)
	modOff := len(b)
	b = append(b, modinfo...)
	strOff := len(b)
	b = append(b, shstr...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	shoff := len(b)
	le.PutUint64(b[40:], uint64(shoff))
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[58:], shsize)
	le.PutUint16(b[60:], 3) // shnum
	le.PutUint16(b[62:], 2) // shstrndx
	sh := func(name, typ uint32, off, size int) {
		s := make([]byte, shsize)
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], uint64(off))
		le.PutUint64(s[32:], uint64(size))
		le.PutUint64(s[48:], 1)
		b = append(b, s...)
	}
	sh(0, 0, 0, 0)
	sh(1, 1, modOff, len(modinfo)) // SHT_PROGBITS
	sh(10, 3, strOff, len(shstr))  // SHT_STRTAB
	return b
}

// fakeModuleTree lays out a kernel's lib/modules/<ver> the way a Debian
// package ships it: no modules.dep, a modules.builtin, and one compressed
// module with a dash in its file name.
func fakeModuleTree(t *testing.T, withDep bool) string {
	t.Helper()
	dir := t.TempDir()
	mods := map[string][]byte{
		"kernel/drivers/virtio/virtio.ko":                              fakeKO("virtio"),
		"kernel/drivers/virtio/virtio_ring.ko":                         fakeKO("virtio_ring"),
		"kernel/drivers/virtio/virtio_mmio.ko":                         fakeKO("virtio_mmio", "virtio", "virtio_ring"),
		"kernel/net/core/failover.ko":                                  fakeKO("failover"),
		"kernel/drivers/net/net_failover.ko":                           fakeKO("net_failover", "failover"),
		"kernel/drivers/net/virtio_net.ko":                             fakeKO("virtio_net", "net_failover", "virtio_ring", "virtio"),
		"kernel/drivers/char/virtio_console.ko":                        fakeKO("virtio_console", "virtio", "virtio_ring"),
		"kernel/drivers/unrelated/unrelated.ko":                        fakeKO("unrelated", "virtio"),
		"kernel/net/vmw_vsock/vsock.ko":                                fakeKO("vsock"),
		"kernel/net/vmw_vsock/vmw-vsock-virtio-transport-common.ko.xz": nil,
	}
	for rel, b := range mods {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if b == nil { // the compressed one
			var buf bytes.Buffer
			w, _ := xz.NewWriter(&buf)
			w.Write(fakeKO("vmw_vsock_virtio_transport_common", "vsock", "virtio"))
			w.Close()
			b = buf.Bytes()
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A built-in that nothing here needs: listed, but irrelevant.
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/base/firmware.ko\n"), 0o644)
	if withDep {
		dep := "kernel/drivers/virtio/virtio.ko:\n" +
			"kernel/drivers/virtio/virtio_ring.ko:\n" +
			"kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n" +
			"kernel/net/core/failover.ko:\n" +
			"kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
			"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n" +
			"kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n"
		os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644)
	}
	return dir
}

func names(ms []Module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.File())
	}
	return out
}

func orderLines(ms []Module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.OrderLine())
	}
	return out
}

func TestResolveModulesFromModinfo(t *testing.T) {
	ix, err := loadModuleIndex(fakeModuleTree(t, false))
	if err != nil {
		t.Fatal(err)
	}
	want := []moduleWant{{name: "virtio_mmio"}, {name: "virtio_net", device: VirtioNet}, {name: "virtio_console", device: VirtioConsole},
		{name: "vmw_vsock_virtio_transport_common", optional: true, device: VirtioVsock}, {name: "absent_optional", optional: true}}
	got, err := ix.resolve(want)
	if err != nil {
		t.Fatal(err)
	}
	exp := []string{"virtio.ko", "virtio_ring.ko", "virtio_mmio.ko", "failover.ko virtio=1", "net_failover.ko virtio=1", "virtio_net.ko virtio=1",
		"virtio_console.ko virtio=3", "vsock.ko virtio=19", "vmw_vsock_virtio_transport_common.ko.xz virtio=19"}
	if !reflect.DeepEqual(orderLines(got), exp) {
		t.Fatalf("order = %q\nwant   %q", orderLines(got), exp)
	}
}

// A dependency shared by the drivers of two different devices is needed
// whichever the VM has, so it is always loaded.
func TestResolveModulesSharedByDevices(t *testing.T) {
	ix, err := loadModuleIndex(fakeModuleTree(t, false))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.resolve([]moduleWant{{name: "virtio_net", device: VirtioNet}, {name: "virtio_console", device: VirtioConsole}})
	if err != nil {
		t.Fatal(err)
	}
	exp := []string{"failover.ko virtio=1", "net_failover.ko virtio=1", "virtio_ring.ko", "virtio.ko", "virtio_net.ko virtio=1", "virtio_console.ko virtio=3"}
	if !reflect.DeepEqual(orderLines(got), exp) {
		t.Fatalf("order = %q\nwant   %q", orderLines(got), exp)
	}
}

func TestResolveModulesFromModulesDep(t *testing.T) {
	dir := fakeModuleTree(t, true)
	// Corrupt a module: with modules.dep present its bytes must not be read.
	os.WriteFile(filepath.Join(dir, "kernel/drivers/net/virtio_net.ko"), []byte("junk"), 0o644)
	ix, err := loadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.resolve(guestModules)
	if err != nil {
		t.Fatal(err)
	}
	exp := []string{"virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "failover.ko", "net_failover.ko", "virtio_net.ko", "virtio_console.ko"}
	if !reflect.DeepEqual(names(got), exp) {
		t.Fatalf("order = %v\nwant   %v", names(got), exp)
	}
}

func TestResolveModulesBuiltinAndMissing(t *testing.T) {
	dir := fakeModuleTree(t, false)
	os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\nkernel/drivers/char/virtio_console.ko\n"), 0o644)
	ix, err := loadModuleIndex(dir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ix.resolve(guestModules[:3])
	if err != nil {
		t.Fatal(err)
	}
	if exp := []string{"virtio_mmio.ko", "failover.ko", "net_failover.ko", "virtio_net.ko"}; !reflect.DeepEqual(names(got), exp) {
		t.Fatalf("with built-ins: %v, want %v", names(got), exp)
	}
	os.Remove(filepath.Join(dir, "kernel/net/core/failover.ko"))
	ix, _ = loadModuleIndex(dir)
	_, err = ix.resolve(guestModules[:3])
	if err == nil || !strings.Contains(err.Error(), "failover") || !strings.Contains(err.Error(), "net_failover") {
		t.Fatalf("missing dependency: err = %v, want one naming failover and who needs it", err)
	}
	_, err = ix.resolve([]moduleWant{{name: "virtio_gpu"}})
	if err == nil || !strings.Contains(err.Error(), "virtio_gpu") {
		t.Fatalf("missing wanted module: err = %v", err)
	}
}

// signed appends a signature as the kernel's sign-file does: the signature,
// struct module_signature (its last four bytes: the signature's length,
// big-endian), the marker.
func signed(ko, sig []byte) []byte {
	info := make([]byte, 12)
	info[2] = 2 // id_type PKEY_ID_PKCS7
	binary.BigEndian.PutUint32(info[8:], uint32(len(sig)))
	out := append(append(append([]byte(nil), ko...), sig...), info...)
	return append(out, moduleSigMagic...)
}

func TestStripSignature(t *testing.T) {
	ko := append([]byte("\x7fELF"), bytes.Repeat([]byte{7}, 100)...)
	got, err := stripSignature(signed(ko, bytes.Repeat([]byte{0xa5}, 681)))
	if err != nil || !bytes.Equal(got, ko) {
		t.Fatalf("stripSignature = %d bytes, %v; want the %d bytes of the module", len(got), err, len(ko))
	}
	if got, err := stripSignature(ko); err != nil || !bytes.Equal(got, ko) {
		t.Fatalf("unsigned module changed: %d bytes, %v", len(got), err)
	}
	bad := signed(ko, nil)
	binary.BigEndian.PutUint32(bad[len(bad)-len(moduleSigMagic)-4:], 1<<20)
	if _, err := stripSignature(bad); err == nil {
		t.Fatal("a signature longer than the module was accepted")
	}
	if _, err := stripSignature([]byte("xx" + moduleSigMagic)); err == nil {
		t.Fatal("a truncated signature block was accepted")
	}
}

func TestSignaturesOptional(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(body), 0o644)
		return p
	}
	debian := write("debian", "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n")
	forced := write("forced", "CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n")
	for _, tt := range []struct {
		path string
		want bool
	}{{debian, true}, {forced, false}, {"", false}, {filepath.Join(dir, "absent"), false}} {
		if got := signaturesOptional(tt.path); got != tt.want {
			t.Errorf("signaturesOptional(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}
