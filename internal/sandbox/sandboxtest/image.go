package sandboxtest

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nex-engine/nex/internal/guestimage"
)

// EnvCacheDir names where VM tests keep kernel packages and guest images
// across runs (scripts/test sets it); default: the user cache dir's nex.
const EnvCacheDir = "NEX_CACHE_DIR"

// EnvGuestKernel names a kernel (vmlinux or bzImage) the VM tests boot
// instead of Debian's cloud kernel, e.g. one built by `nex rootfs kernel`.
// It must have the guest's drivers built in: no modules go with it.
const EnvGuestKernel = "NEX_GUEST_KERNEL"

var (
	imagesMu sync.Mutex
	images   = map[string]guestimage.Image{}
)

// GuestImage returns the guest image with agent (a static nex) as /init,
// built once per test process per agent and cached across runs: a build
// of the same source gives the same nex, hence the same image.
func GuestImage(tb testing.TB, agent string) guestimage.Image {
	tb.Helper()
	imagesMu.Lock()
	defer imagesMu.Unlock()
	if img, ok := images[agent]; ok {
		return img
	}
	cache := os.Getenv(EnvCacheDir)
	if cache == "" {
		dir, err := os.UserCacheDir()
		if err != nil {
			dir = os.TempDir()
		}
		cache = filepath.Join(dir, "nex")
	}
	img, err := guestimage.Build(context.Background(), guestimage.Options{
		CacheDir: filepath.Join(cache, "images"),
		Agent:    agent,
		Kernel:   os.Getenv(EnvGuestKernel),
	})
	if err != nil {
		tb.Fatal(err)
	}
	images[agent] = img
	return img
}
