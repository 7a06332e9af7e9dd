package node

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/api"
)

var (
	// Subjects a function may never be triggered on.
	reservedTriggers = []string{"$SYS.", "$JS.", "$NEX."}
)

// knownTypes are the workload types of the protocol, whether or not this
// node runs them.
var knownTypes = map[string]bool{api.WorkloadNative: true, api.WorkloadV8: true, api.WorkloadWasm: true}

// verifiedJWT is what a checked workload JWT says.
type verifiedJWT struct {
	issuer, subject, jti, hash string
	iat                        int64
}

// verifyJWT checks signature, standard claims, the issuer's kind and the
// issuer allow-list.
func (n *Node) verifyJWT(token string) (*verifiedJWT, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: missing field workload_jwt", ErrBadRequest)
	}
	claims, err := jwt.DecodeGeneric(token)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadJWT, err)
	}
	if !nkeys.IsValidPublicAccountKey(claims.Issuer) {
		return nil, fmt.Errorf("%w: it is signed by %q, which is not an account key (A…); sign workload JWTs with an account seed", ErrBadJWT, claims.Issuer)
	}
	now := time.Now().Unix()
	if claims.Expires > 0 && now > claims.Expires {
		return nil, fmt.Errorf("%w: it expired at %s", ErrBadJWT, time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
	}
	if claims.NotBefore > 0 && now < claims.NotBefore {
		return nil, fmt.Errorf("%w: it is not valid before %s", ErrBadJWT, time.Unix(claims.NotBefore, 0).UTC().Format(time.RFC3339))
	}
	vr := jwt.CreateValidationResults()
	claims.Validate(vr)
	if errs := vr.Errors(); len(errs) > 0 {
		return nil, fmt.Errorf("%w: %v", ErrBadJWT, errors.Join(errs...))
	}
	if len(n.cfg.ValidIssuers) > 0 {
		ok := false
		for _, iss := range n.cfg.ValidIssuers {
			ok = ok || iss == claims.Issuer
		}
		if !ok {
			return nil, fmt.Errorf("%w: %s is not in this node's valid_issuers", ErrIssuer, claims.Issuer)
		}
	}
	if !api.IsWorkloadName(claims.Subject) {
		return nil, fmt.Errorf("%w: workload name (JWT sub) %q must match ^[a-zA-Z0-9_-]+$", ErrBadRequest, claims.Subject)
	}
	v := &verifiedJWT{issuer: claims.Issuer, subject: claims.Subject, jti: claims.ID, iat: claims.IssuedAt}
	if h, ok := claims.Data["hash"].(string); ok {
		v.hash = strings.ToLower(h)
	}
	return v, nil
}

// openEnvironment decrypts the sealed environment; keys are upper-cased.
func (n *Node) openEnvironment(req api.DeployRequest) (map[string]string, error) {
	if req.EncryptedEnvironment == nil || *req.EncryptedEnvironment == "" {
		return map[string]string{}, nil
	}
	sender := ""
	if req.SenderPublicKey != nil {
		sender = *req.SenderPublicKey
	}
	if !nkeys.IsValidPublicCurveKey(sender) {
		return nil, fmt.Errorf("%w: sender_public_key %q is not a curve public key (X…)", ErrEnvironment, sender)
	}
	sealed, err := base64.StdEncoding.DecodeString(*req.EncryptedEnvironment)
	if err != nil {
		return nil, fmt.Errorf("%w: environment is not base64: %v", ErrEnvironment, err)
	}
	plain, err := n.o.Identity.XKey.Open(sealed, sender)
	if err != nil {
		return nil, fmt.Errorf("%w: it was not sealed to this node's xkey %s by sender %s (sealed to another node, tampered with, or a wrong sender_public_key)",
			ErrEnvironment, n.o.Identity.PublicXKey(), sender)
	}
	var env map[string]string
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("%w: decrypted environment is not a JSON object of strings: %v", ErrEnvironment, err)
	}
	out := make(map[string]string, len(env))
	for k, v := range env {
		out[strings.ToUpper(k)] = v
	}
	return out, nil
}

// checkRequest runs every check that needs no I/O.
func (n *Node) checkRequest(req api.DeployRequest) (*verifiedJWT, map[string]string, error) {
	switch {
	case req.WorkloadType == "":
		return nil, nil, fmt.Errorf("%w: missing field type", ErrBadRequest)
	case !knownTypes[req.WorkloadType]:
		return nil, nil, fmt.Errorf("%w: unknown workload type %q (native, v8, wasm)", ErrBadRequest, req.WorkloadType)
	case !n.typeAllowed(req.WorkloadType):
		return nil, nil, fmt.Errorf("%w: %q is not allowed on this node (allowed: %s)", ErrWorkloadType,
			req.WorkloadType, strings.Join(n.cfg.WorkloadTypes, ", "))
	case req.Location == nil || req.Location.Scheme == "":
		return nil, nil, fmt.Errorf("%w: missing field location", ErrBadRequest)
	case req.TargetNode != nil && *req.TargetNode != "" && *req.TargetNode != n.id:
		return nil, nil, fmt.Errorf("%w: target_node is %s, this node is %s", ErrWrongNode, *req.TargetNode, n.id)
	}
	if len(req.TriggerSubjects) > 0 && req.WorkloadType == api.WorkloadNative {
		return nil, nil, fmt.Errorf("%w: trigger_subjects are for function workloads (v8, wasm), not native", ErrBadRequest)
	}
	for _, s := range req.TriggerSubjects {
		for _, r := range reservedTriggers {
			if strings.HasPrefix(s, r) || s == ">" {
				return nil, nil, fmt.Errorf("%w: trigger subject %q is reserved", ErrBadRequest, s)
			}
		}
	}
	v, err := n.verifyJWT(deref(req.WorkloadJWT))
	if err != nil {
		return nil, nil, err
	}
	if !api.IsSHA256Hex(v.hash) {
		return nil, nil, fmt.Errorf("%w: claim data.hash must be the hex sha256 of the artifact, got %q", ErrBadJWT, v.hash)
	}
	env, err := n.openEnvironment(req)
	if err != nil {
		return nil, nil, err
	}
	return v, env, nil
}

// artifactSource is where an artifact's bytes come from, as far as can be
// told without reading them.
type artifactSource struct {
	digest string // hex sha256 the source claims, "" when unknown
	// open returns the bytes, and the hex sha256 the reader itself checks
	// them against at their end ("" when it does not: the node hashes them).
	open func() (r io.ReadCloser, verifies string, err error)
}

// locateArtifact resolves a deploy's location, refusing a missing object or
// one over the size limit before anything is downloaded.
func (n *Node) locateArtifact(ctx context.Context, req api.DeployRequest) (*artifactSource, error) {
	limit := n.cfg.NodeLimits.MaxWorkloadBytes
	loc := req.Location
	switch loc.Scheme {
	case "nats":
		js, err := jetstream.New(n.o.Control)
		if d := deref(req.JsDomain); d != "" {
			js, err = jetstream.NewWithDomain(n.o.Control, d)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: jetstream: %v", ErrArtifact, err)
		}
		obs, err := js.ObjectStore(ctx, loc.Bucket())
		if err != nil {
			return nil, fmt.Errorf("%w: object store bucket %q: %v", ErrArtifact, loc.Bucket(), err)
		}
		info, err := obs.GetInfo(ctx, loc.Key())
		if err != nil {
			return nil, fmt.Errorf("%w: nats://%s/%s: %v", ErrArtifact, loc.Bucket(), loc.Key(), err)
		}
		if int64(info.Size) > limit {
			return nil, fmt.Errorf("%w: it is %d bytes, over this node's limit of %d (node_limits.max_workload_bytes)", ErrLimit, info.Size, limit)
		}
		src := &artifactSource{open: func() (io.ReadCloser, string, error) {
			r, err := obs.Get(ctx, loc.Key())
			if err != nil {
				return nil, "", fmt.Errorf("%w: nats://%s/%s: %v", ErrArtifact, loc.Bucket(), loc.Key(), err)
			}
			// The object reader checks the bytes against the digest of the
			// object it reads (which may have been replaced since GetInfo).
			info, err := r.Info()
			if err != nil {
				r.Close()
				return nil, "", fmt.Errorf("%w: nats://%s/%s: %v", ErrArtifact, loc.Bucket(), loc.Key(), err)
			}
			sum, err := jetstream.DecodeObjectDigest(info.Digest)
			if err != nil {
				return r, "", nil
			}
			return r, hex.EncodeToString(sum), nil
		}}
		if sum, err := jetstream.DecodeObjectDigest(info.Digest); err == nil {
			src.digest = hex.EncodeToString(sum)
		}
		return src, nil
	case "file":
		if !n.cfg.AllowFileLocations {
			return nil, fmt.Errorf("%w: file:// locations are not allowed on this node (allow_file_locations)", ErrArtifact)
		}
		st, err := os.Stat(loc.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrArtifact, err)
		}
		if st.Size() > limit {
			return nil, fmt.Errorf("%w: it is %d bytes, over this node's limit of %d (node_limits.max_workload_bytes)", ErrLimit, st.Size(), limit)
		}
		return &artifactSource{open: func() (io.ReadCloser, string, error) {
			f, err := os.Open(loc.Path)
			if err != nil {
				return nil, "", fmt.Errorf("%w: %v", ErrArtifact, err)
			}
			return f, "", nil
		}}, nil
	}
	return nil, fmt.Errorf("%w: unsupported location scheme %q (nats://bucket/key or file://)", ErrArtifact, loc.Scheme)
}

// fetchArtifact makes the artifact available in the node's store, refusing
// it when it is over the size limit or its sha256 is not the JWT's hash. A
// verified copy of the same bytes already here is used without a download.
func (n *Node) fetchArtifact(ctx context.Context, req api.DeployRequest, wantHash string) (path string, size int64, err error) {
	src, err := n.locateArtifact(ctx, req)
	if err != nil {
		return "", 0, err
	}
	if src.digest != "" && src.digest != wantHash {
		return "", 0, digestError(src.digest, wantHash)
	}
	limit := n.cfg.NodeLimits.MaxWorkloadBytes
	path, size, _, err = n.artifacts.acquire(wantHash, func(tmp string) (int64, error) {
		r, verifies, err := src.open()
		if err != nil {
			return 0, err
		}
		defer r.Close()
		if verifies != "" && verifies != wantHash {
			return 0, digestError(verifies, wantHash)
		}
		f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return 0, fmt.Errorf("%w: %v", ErrArtifact, err)
		}
		// Hash here only what the reader does not check itself.
		var h hash.Hash
		var w io.Writer = f
		if verifies == "" {
			h = sha256.New()
			w = io.MultiWriter(f, h)
		}
		size, err := io.Copy(w, io.LimitReader(r, limit+1))
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, fmt.Errorf("%w: download: %v", ErrArtifact, err)
		}
		if size > limit {
			return 0, fmt.Errorf("%w: it is over this node's limit of %d bytes (node_limits.max_workload_bytes)", ErrLimit, limit)
		}
		if h != nil {
			if got := hexSum(h); got != wantHash {
				return 0, digestError(got, wantHash)
			}
		}
		return size, nil
	})
	return path, size, err
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

func (n *Node) artifactDir() string { return filepath.Join(n.cfg.StateDir, "artifacts") }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
