package node

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nkeys"
)

func TestIdentityPersistsAndChecksKinds(t *testing.T) {
	dir := t.TempDir()
	seed, xseed := filepath.Join(dir, "node.nk"), filepath.Join(dir, "node.xk")
	a, err := NewIdentity(seed, xseed)
	if err != nil {
		t.Fatal(err)
	}
	if !nkeys.IsValidPublicServerKey(a.ID()) || !nkeys.IsValidPublicCurveKey(a.PublicXKey()) {
		t.Fatalf("id %s xkey %s", a.ID(), a.PublicXKey())
	}
	for _, f := range []string{seed, xseed} {
		st, err := os.Stat(f)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, st.Mode(), err)
		}
	}
	b, err := NewIdentity(seed, xseed)
	if err != nil || b.ID() != a.ID() || b.PublicXKey() != a.PublicXKey() {
		t.Fatalf("restarted identity differs: %v", err)
	}
	if c, _ := NewIdentity("", ""); c.ID() == a.ID() {
		t.Fatal("unsaved identities repeat")
	}
	// Seeds of the wrong kind are refused with the file named.
	if _, err := NewIdentity(xseed, ""); err == nil || !strings.Contains(err.Error(), xseed) {
		t.Fatalf("curve seed as node seed: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	_ = os.WriteFile(bad, []byte("nonsense"), 0o600)
	if _, err := NewIdentity(bad, ""); err == nil || !strings.Contains(err.Error(), "not an nkey seed") {
		t.Fatalf("garbage seed: %v", err)
	}
}
