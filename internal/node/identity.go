package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"
)

// Identity is who a node is: its id (a server nkey, N…) and the curve key
// (xkey, X…) deploy requests seal their environment to.
type Identity struct {
	Key  nkeys.KeyPair // server nkey
	XKey nkeys.KeyPair // curve key
	// Public keys, derived once: a curve key's PublicKey is a scalar
	// multiplication, too slow for every ping.
	id, xpub string
}

// ID is the node's public nkey.
func (i Identity) ID() string { return i.id }

// PublicXKey is the node's public curve key.
func (i Identity) PublicXKey() string { return i.xpub }

// NewIdentity loads the seeds from the given files, creating a file (0600)
// that does not exist yet; an empty path means a fresh, unsaved key.
func NewIdentity(nodeSeedFile, xkeySeedFile string) (Identity, error) {
	k, err := loadOrCreate(nodeSeedFile, nkeys.PrefixByteServer, nkeys.CreateServer)
	if err != nil {
		return Identity{}, fmt.Errorf("node key: %w", err)
	}
	x, err := loadOrCreate(xkeySeedFile, nkeys.PrefixByteCurve, nkeys.CreateCurveKeys)
	if err != nil {
		return Identity{}, fmt.Errorf("node xkey: %w", err)
	}
	id, _ := k.PublicKey()
	xpub, _ := x.PublicKey()
	return Identity{Key: k, XKey: x, id: id, xpub: xpub}, nil
}

func loadOrCreate(path string, want nkeys.PrefixByte, create func() (nkeys.KeyPair, error)) (nkeys.KeyPair, error) {
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
			if err != nil {
				return nil, fmt.Errorf("%s: not an nkey seed: %w", path, err)
			}
			pub, _ := kp.PublicKey()
			if nkeys.Prefix(pub) != want {
				return nil, fmt.Errorf("%s: seed is a %s key, want a %s key", path, nkeys.Prefix(pub), want)
			}
			return kp, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, err
		}
	}
	kp, err := create()
	if err != nil {
		return nil, err
	}
	if path != "" {
		seed, _ := kp.Seed()
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, append(seed, '\n'), 0o600); err != nil {
			return nil, err
		}
	}
	return kp, nil
}
