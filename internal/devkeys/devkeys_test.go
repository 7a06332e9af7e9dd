package devkeys

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/nats-io/nkeys"
)

func TestLoadOrCreateMakesPrivateFilesAndReloadsThem(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	dir, err := Dir("")
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(home, ".nex") {
		t.Fatalf("Dir = %s, want under $HOME %s", dir, home)
	}
	k1, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{IssuerFile, PublisherFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", st.Mode().Perm())
	}
	iss, _ := k1.Issuer.PublicKey()
	pub, _ := k1.Publisher.PublicKey()
	if !nkeys.IsValidPublicAccountKey(iss) {
		t.Errorf("issuer %s is not an account key", iss)
	}
	if !nkeys.IsValidPublicCurveKey(pub) {
		t.Errorf("publisher %s is not a curve key", pub)
	}
	k2, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	iss2, _ := k2.Issuer.PublicKey()
	pub2, _ := k2.Publisher.PublicKey()
	if iss2 != iss || pub2 != pub {
		t.Errorf("second load made new keys: %s/%s vs %s/%s", iss2, pub2, iss, pub)
	}
	// No temp files left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("key dir holds %d entries, want 2", len(ents))
	}
}

func TestConcurrentCreateAgreesOnOneKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), IssuerFile)
	const n = 8
	keys := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			kp, err := LoadOrCreateIssuer(path)
			if err != nil {
				t.Error(err)
				return
			}
			keys[i], _ = kp.PublicKey()
		})
	}
	wg.Wait()
	for _, k := range keys[1:] {
		if k != keys[0] {
			t.Fatalf("concurrent creators disagree: %v", keys)
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	user, _ := nkeys.CreateUser()
	userSeed, _ := user.Seed()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, body, want string
		load             func(string) (nkeys.KeyPair, error)
	}{
		{"empty", "  \n", "is empty", LoadIssuer},
		{"garbage", "not-a-seed", "not a valid nkey seed", LoadIssuer},
		{"wrong type", string(userSeed), "seed of type user, want an account seed", LoadIssuer},
		{"wrong type for xkey", string(userSeed), "want a curve (xkey) seed", LoadPublisher},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(c.name, " ", "_"), c.body)
			_, err := c.load(p)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), p) {
				t.Fatalf("err = %v, want one naming %s and saying %q", err, p, c.want)
			}
			// A corrupt file is never silently replaced.
			if _, err := LoadOrCreateIssuer(p); err == nil {
				t.Fatal("LoadOrCreate replaced a corrupt key file")
			}
		})
	}
	_, err := LoadIssuer(filepath.Join(dir, "missing"))
	if !errors.Is(err, ErrNoKey) {
		t.Fatalf("missing file: err = %v, want ErrNoKey", err)
	}
}
