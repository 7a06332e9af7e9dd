package controlclient

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
)

// DefaultBucket is the object store the developer commands upload to, as the
// reference CLI does.
const DefaultBucket = "NEXCLIFILES"

// ValidName checks a workload name.
func ValidName(name string) error {
	if !api.IsWorkloadName(name) {
		return fmt.Errorf("workload name %q: use only letters, digits, '_' and '-'", name)
	}
	return nil
}

// NameFromPath derives a workload name from a file path or object key: the
// base name without extension, with every disallowed character made '-'.
func NameFromPath(p string) string {
	base := filepath.Base(p)
	base = strings.TrimSuffix(base, filepath.Ext(base))
	var b strings.Builder
	for _, r := range base {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	if s := strings.Trim(b.String(), "-"); s != "" {
		return s
	}
	return "workload"
}

// TypeFromPath infers the workload type from an extension, as the reference
// CLI does: .js JavaScript (v8 on the wire), .wasm WebAssembly, else native.
func TypeFromPath(p string) string {
	switch strings.ToLower(filepath.Ext(p)) {
	case ".js":
		return api.WorkloadV8
	case ".wasm":
		return api.WorkloadWasm
	}
	return api.WorkloadNative
}

// HashReader returns the hex sha256 of everything r yields, the form of the
// workload JWT's data.hash.
func HashReader(r io.Reader) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return "", n, fmt.Errorf("hash artifact: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// WorkloadJWT signs the claims a deploy carries: sub = name, data.hash = the
// artifact's hex sha256, issued by the account key issuer.
func WorkloadJWT(issuer nkeys.KeyPair, name, hash string) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if _, err := hex.DecodeString(hash); err != nil || len(hash) != 2*sha256.Size {
		return "", fmt.Errorf("workload hash %q is not a hex sha256", hash)
	}
	c := jwt.NewGenericClaims(name)
	c.Data["hash"] = hash
	tok, err := c.Encode(issuer)
	if err != nil {
		return "", fmt.Errorf("sign workload JWT: %w", err)
	}
	return tok, nil
}

// StopJWT signs the claims a stop carries: the same sub and issuer as the
// deploy JWT. The node requires a different iat (and so jti) from the deploy
// JWT, and iat has one-second resolution: when the workload may have been
// deployed in the current second (deployedAt, best known), StopJWT waits for
// the next one.
func StopJWT(ctx context.Context, issuer nkeys.KeyPair, name string, deployedAt time.Time) (string, error) {
	if err := ValidName(name); err != nil {
		return "", err
	}
	if err := waitPastSecond(ctx, deployedAt); err != nil {
		return "", err
	}
	tok, err := jwt.NewGenericClaims(name).Encode(issuer)
	if err != nil {
		return "", fmt.Errorf("sign stop JWT: %w", err)
	}
	return tok, nil
}

// DeployedAt estimates when a workload with the given uptime (as nodes
// report it, e.g. "10m15s") was deployed, erring late so StopJWT never
// signs in the deploy's second; an unknown uptime means "just now".
func DeployedAt(uptime string, now time.Time) time.Time {
	d, err := time.ParseDuration(uptime)
	if err != nil || d < 0 {
		return now
	}
	return now.Add(-d + time.Second/2) // rounding to whole seconds may overstate it by 0.5s
}

func waitPastSecond(ctx context.Context, t time.Time) error {
	next := time.Unix(t.Unix()+1, 0)
	d := time.Until(next)
	if d <= 0 {
		return nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SealEnvironment encrypts env for the node whose curve public key is
// targetXkey, from sender (a curve key pair), and encodes it as the deploy
// request's environment: base64 (std) of the sealed JSON object.
func SealEnvironment(sender nkeys.KeyPair, targetXkey string, env map[string]string) (string, error) {
	if !nkeys.IsValidPublicCurveKey(targetXkey) {
		return "", fmt.Errorf("node xkey %q is not a curve public key (X…)", targetXkey)
	}
	if env == nil {
		env = map[string]string{}
	}
	plain, err := json.Marshal(env)
	if err != nil {
		return "", fmt.Errorf("encode environment: %w", err)
	}
	sealed, err := sender.Seal(plain, targetXkey)
	if err != nil {
		return "", fmt.Errorf("seal environment: %w", err)
	}
	return base64.StdEncoding.EncodeToString(sealed), nil
}

// ParseEnv turns KEY=value arguments into a map. Keys keep their case: the
// node upper-cases them for native workloads.
func ParseEnv(pairs []string) (map[string]string, error) {
	env := make(map[string]string, len(pairs))
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("environment %q: want KEY=value", p)
		}
		env[k] = v
	}
	return env, nil
}

// NATSLocation is the location of an object-store object.
func NATSLocation(bucket, key string) (*api.Location, error) {
	return api.ParseLocation("nats://" + bucket + "/" + key)
}
