// Package devkeys keeps a developer's signing keys in ~/.nex, the way the
// reference Nex CLI does, so that `nex devrun` works with no key setup and a
// later `nex stop` signs with the issuer that deployed the workload:
// issuer.nk holds an account nkey seed (signs workload JWTs) and
// publisher.xk a curve (xkey) seed (seals the environment to the node).
package devkeys

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nats-io/nkeys"
)

// File names inside the key directory.
const (
	IssuerFile    = "issuer.nk"
	PublisherFile = "publisher.xk"
)

// ErrNoKey is returned by Load* when the key file does not exist.
var ErrNoKey = errors.New("key file does not exist")

// Keys are the developer's issuer and publisher key pairs.
type Keys struct {
	Issuer    nkeys.KeyPair // account key; signs workload JWTs
	Publisher nkeys.KeyPair // curve key; seals environments
}

// Dir is the key directory under home; an empty home means the user's home
// directory ($HOME on Unix, which tests override).
func Dir(home string) (string, error) {
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("find home directory for ~/.nex: %w", err)
		}
		home = h
	}
	return filepath.Join(home, ".nex"), nil
}

// LoadOrCreate loads both keys from dir, creating whichever is missing.
func LoadOrCreate(dir string) (*Keys, error) {
	iss, err := LoadOrCreateIssuer(filepath.Join(dir, IssuerFile))
	if err != nil {
		return nil, err
	}
	pub, err := LoadOrCreatePublisher(filepath.Join(dir, PublisherFile))
	if err != nil {
		return nil, err
	}
	return &Keys{Issuer: iss, Publisher: pub}, nil
}

// kind describes one key file flavour.
type kind struct {
	what   string
	prefix nkeys.PrefixByte
	create func() (nkeys.KeyPair, error)
	parse  func([]byte) (nkeys.KeyPair, error)
}

var (
	issuerKind = kind{"an account seed (SA…)", nkeys.PrefixByteAccount, nkeys.CreateAccount, nkeys.FromSeed}
	curveKind  = kind{"a curve (xkey) seed (SX…)", nkeys.PrefixByteCurve, nkeys.CreateCurveKeys, nkeys.FromCurveSeed}
)

// LoadIssuer loads an existing account seed file; a missing file wraps ErrNoKey.
func LoadIssuer(path string) (nkeys.KeyPair, error) { return load(path, issuerKind) }

// LoadPublisher loads an existing curve seed file; a missing file wraps ErrNoKey.
func LoadPublisher(path string) (nkeys.KeyPair, error) { return load(path, curveKind) }

// LoadOrCreateIssuer loads the account seed at path or creates it (0600).
func LoadOrCreateIssuer(path string) (nkeys.KeyPair, error) { return loadOrCreate(path, issuerKind) }

// LoadOrCreatePublisher loads the curve seed at path or creates it (0600).
func LoadOrCreatePublisher(path string) (nkeys.KeyPair, error) {
	return loadOrCreate(path, curveKind)
}

func load(path string, k kind) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", path, ErrNoKey)
	}
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", path, err)
	}
	seed := bytes.TrimSpace(b)
	if len(seed) == 0 {
		return nil, fmt.Errorf("key file %s is empty: want %s; delete it to have a new one made", path, k.what)
	}
	// Decode first so a seed of the wrong type gets a message that says which.
	pfx, _, err := nkeys.DecodeSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("key file %s is not a valid nkey seed (want %s): %w", path, k.what, err)
	}
	if pfx != k.prefix {
		return nil, fmt.Errorf("key file %s holds a seed of type %s, want %s", path, pfx, k.what)
	}
	kp, err := k.parse(seed)
	if err != nil {
		return nil, fmt.Errorf("key file %s: %w", path, err)
	}
	return kp, nil
}

func loadOrCreate(path string, k kind) (nkeys.KeyPair, error) {
	kp, err := load(path, k)
	if !errors.Is(err, ErrNoKey) {
		return kp, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create key directory: %w", err)
	}
	kp, err = k.create()
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", k.what, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", k.what, err)
	}
	// Written aside and hard-linked into place: two commands started at once
	// must not sign with different issuers, nor read a half-written file.
	// The loser of the race loads the winner's key.
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, werr := tmp.Write(append(seed, '\n'))
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), 0o600)); err != nil {
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return load(path, k)
		}
		return nil, fmt.Errorf("write key %s: %w", path, err)
	}
	return kp, nil
}
