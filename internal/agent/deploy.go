package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/workload"
)

// defaultPath is the workload's PATH unless its deploy sets one; the agent's
// own environment (its seed among it) never reaches the workload.
const defaultPath = "/usr/local/bin:/usr/bin:/bin"

func (a *agent) handleDeploy(m *nats.Msg) {
	var d agentapi.Deploy
	if err := json.Unmarshal(m.Data, &d); err != nil {
		a.respond(m, agentapi.Reply{Error: fmt.Sprintf("bad deploy request: %v", err)})
		return
	}
	log := a.log.With(keyWorkload, d.Name, "workload_id", d.WorkloadID)
	if err := a.deploy(&d); err != nil {
		log.Warn("deploy refused", keyError, err)
		a.respond(m, agentapi.Reply{Error: err.Error()})
		return
	}
	log.Info("workload started", "type", d.Type, "bytes", d.Size)
	a.respond(m, agentapi.Reply{OK: true})
}

// deploy fetches and verifies the artifact and starts it; it returns once the
// workload runs.
func (a *agent) deploy(d *agentapi.Deploy) (err error) {
	rt, ok := a.o.Runtimes[d.Type]
	if !ok {
		return fmt.Errorf("workload type %q is not supported by this agent (supported: %s)",
			d.Type, strings.Join(slices.Sorted(maps.Keys(a.o.Runtimes)), ", "))
	}
	if err := checkName(d.Name); err != nil {
		return err
	}
	if d.Hash == "" {
		return errors.New("deploy has no artifact hash")
	}
	if a.o.Deploying != nil {
		a.o.Deploying()
	}

	// The rehearsal's process goes before the workload comes.
	a.endRehearsal()
	ctx, cancel := context.WithCancel(a.runCtx)
	defer cancel()
	a.mu.Lock()
	switch {
	case a.stopping:
		a.mu.Unlock()
		return errStopping
	case a.busy:
		a.mu.Unlock()
		return errors.New("sandbox already has a workload")
	}
	a.busy, a.cancelDeploy = true, cancel
	a.mu.Unlock()
	defer func() {
		if err == nil {
			return
		}
		// A failed deploy leaves the sandbox free, unless it is stopping,
		// in which case this was the last thing it did.
		a.mu.Lock()
		a.busy, a.cancelDeploy = false, nil
		stopping := a.stopping
		a.mu.Unlock()
		if stopping {
			a.finish()
		}
	}()

	// Files staged ahead and not used go first: they may be another
	// namespace's artifact, which this workload must not find, and an
	// artifact fetched over NATS lands on the same tmpfs and may need
	// their room.
	if err := a.unstage(d.Unstage); err != nil {
		return err
	}
	path := filepath.Join(a.o.WorkDir, d.Name)
	if err := a.fetch(ctx, d, path); err != nil {
		_ = os.Remove(path)
		return err
	}

	wl := &running{
		id:     d.WorkloadID,
		name:   d.Name,
		stdout: newLineWriter("stdout", a.publishLog),
		stderr: newLineWriter("stderr", a.publishLog),
		exited: make(chan struct{}),
	}
	spec := workload.Spec{
		Name:   d.Name,
		Path:   path,
		Args:   d.Argv,
		Env:    a.environment(d),
		Dir:    a.o.WorkDir,
		Stdout: wl.stdout,
		Stderr: wl.stderr,
	}
	// Start under the lock: an undeploy either sees the workload or makes
	// the deploy give up, never neither.
	a.mu.Lock()
	if a.stopping {
		a.mu.Unlock()
		return errStopping
	}
	h, err := rt.Start(ctx, spec)
	if err != nil {
		a.mu.Unlock()
		return err
	}
	wl.h = h
	a.wl, a.cancelDeploy = wl, nil
	a.mu.Unlock()

	a.publishEvent(startedEvent(d))
	go a.watch(wl)
	return nil
}

// startedEvent tells the node that d's workload runs.
func startedEvent(d *agentapi.Deploy) agentapi.Event {
	return agentapi.Event{Type: agentapi.EventWorkloadStarted, WorkloadID: d.WorkloadID, Message: "started " + d.Name}
}

// checkName keeps the artifact inside the work dir whatever the node sent.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) || strings.ContainsRune(name, 0) {
		return fmt.Errorf("invalid workload name %q", name)
	}
	return nil
}

// fetch streams the artifact from the node in chunks to path and checks its
// size and sha256 against the deploy; the file is executable only once it
// has passed.
func (a *agent) fetch(ctx context.Context, d *agentapi.Deploy, path string) error {
	if d.StagedPath != "" {
		return takeStaged(d, path)
	}
	if a.o.CheckRoom != nil {
		if err := a.o.CheckRoom(d.Size); err != nil {
			return fmt.Errorf("fetch artifact: %w", err)
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("fetch artifact: %w", err)
	}
	defer f.Close()
	sum := sha256.New()
	n, err := a.download(ctx, d.Size, io.MultiWriter(f, sum))
	if err != nil {
		return err
	}
	if d.Size > 0 && n != d.Size {
		return fmt.Errorf("artifact is %d bytes, the deploy said %d", n, d.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); !strings.EqualFold(got, d.Hash) {
		return fmt.Errorf("artifact sha256 %s does not match the deploy's hash %s: refusing to run it", got, d.Hash)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fetch artifact: %w", err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		return fmt.Errorf("fetch artifact: %w", err)
	}
	return nil
}

// unstage deletes the files a deploy says were staged ahead and not used.
// It fails, and the deploy with it, rather than run a workload next to a
// file it was told to remove: one outside Options.StagedDir (or with no
// StagedDir at all), or one it could not delete.
func (a *agent) unstage(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	if a.o.StagedDir == "" {
		return errors.New("deploy asks to unstage files, but this sandbox has no staged directory")
	}
	dir := filepath.Clean(a.o.StagedDir)
	for _, p := range paths {
		if filepath.Dir(filepath.Clean(p)) != dir {
			return fmt.Errorf("unstage %q: not in the staged directory %s", p, dir)
		}
	}
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unstage: %w", err)
		}
	}
	return nil
}

// takeStaged moves an artifact the node staged into place. Its sha256 is
// not computed again: the node verified the bytes it copied, and a
// sandbox sharing the host's filesystem and user cannot keep from the agent
// what it could change in the agent itself; in a VM, PID 1 wrote the file
// from the host's own channel (the file port) into the guest's tmpfs, where
// only root writes. The size is still checked.
func takeStaged(d *agentapi.Deploy, path string) error {
	st, err := os.Stat(d.StagedPath)
	if err != nil {
		return fmt.Errorf("staged artifact: %w", err)
	}
	if d.Size > 0 && st.Size() != d.Size {
		_ = os.Remove(d.StagedPath)
		return fmt.Errorf("staged artifact is %d bytes, the deploy said %d", st.Size(), d.Size)
	}
	if err := os.Rename(d.StagedPath, path); err != nil {
		return fmt.Errorf("staged artifact: %w", err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		return fmt.Errorf("staged artifact: %w", err)
	}
	return nil
}

// download requests chunks until an empty one; size, when known, bounds
// what it accepts.
func (a *agent) download(ctx context.Context, size int64, w io.Writer) (int64, error) {
	subject := agentapi.ArtifactSubject(a.id)
	var off int64
	for {
		req, _ := json.Marshal(agentapi.ArtifactChunk{Offset: off, Length: agentapi.ChunkSize})
		rctx, cancel := context.WithTimeout(ctx, chunkTimeout)
		msg, err := a.nc.RequestWithContext(rctx, subject, req)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return off, errStopping
			}
			return off, fmt.Errorf("fetch artifact at offset %d: %w", off, err)
		}
		if e := msg.Header.Get(agentapi.ErrorHeader); e != "" {
			return off, fmt.Errorf("fetch artifact at offset %d: node says: %s", off, e)
		}
		if len(msg.Data) == 0 {
			return off, nil
		}
		if size > 0 && off+int64(len(msg.Data)) > size {
			return off, fmt.Errorf("artifact is larger than the %d bytes the deploy said", size)
		}
		if _, err := w.Write(msg.Data); err != nil {
			return off, fmt.Errorf("fetch artifact: %w", err)
		}
		off += int64(len(msg.Data))
	}
}

// environment is the workload's whole environment, sorted so it reads the
// same every time.
func (a *agent) environment(d *agentapi.Deploy) []string {
	env := map[string]string{"PATH": defaultPath, "HOME": a.o.WorkDir}
	maps.Copy(env, d.Env)
	if _, ok := d.Env["NATS_URL"]; !ok {
		env["NATS_URL"] = a.workloadNATSURL(d)
	}
	out := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		out = append(out, k+"="+env[k])
	}
	return out
}

// workloadNATSURL points the workload at the node's NATS as its own user.
func (a *agent) workloadNATSURL(d *agentapi.Deploy) string {
	addr := a.o.WorkloadNATSAddr
	if addr == "" {
		first, _, _ := strings.Cut(a.o.Meta.NATSURL, ",")
		if u, err := url.Parse(strings.TrimSpace(first)); err == nil {
			addr = u.Host
		}
	}
	u := url.URL{Scheme: "nats", Host: addr}
	if d.NATSUser != "" {
		u.User = url.UserPassword(d.NATSUser, d.NATSPassword)
	}
	return u.String()
}
