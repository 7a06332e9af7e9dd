package natsd

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/nex-engine/nex/internal/agentapi"
)

// Accounts of the internal server.
const (
	NodeAccount     = "NEXNODE"     // the node and its agents
	WorkloadAccount = "NEXWORKLOAD" // workloads; leaf-linked to the control plane
)

// Subjects no workload may touch, in either direction.
var workloadDenied = []string{"$NEX.>", "$SYS.>", "agentint.>"}

// InternalOptions configures StartInternal.
type InternalOptions struct {
	StoreDir string // JetStream storage; required
	Host     string // default 127.0.0.1
	Port     int    // default random
	// LeafURL links the workload account to the control plane (nil: no link).
	LeafURL *url.URL
	// LeafCredentials is a creds file for the leaf connection, if the hub
	// requires one.
	LeafCredentials string
	// Domain is the JetStream domain of the internal server; it must differ
	// from the control plane's so the two JetStreams stay apart.
	Domain string
	Log    *slog.Logger
}

// Internal is a node's internal server. Users are added and removed at run
// time without a reload: a custom authenticator checks each connection
// against the live tables below.
type Internal struct {
	srv  *server.Server
	opts *server.Options
	log  *slog.Logger

	nodeKey nkeys.KeyPair

	mu        sync.RWMutex
	agents    map[string]string       // agent public nkey → sandbox id
	workloads map[string]workloadUser // username → credentials
}

type workloadUser struct {
	password string
}

// StartInternal starts the internal server on loopback.
func StartInternal(o InternalOptions) (*Internal, error) {
	if o.StoreDir == "" {
		return nil, errors.New("internal nats: store dir is empty")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	host := o.Host
	if host == "" {
		host = "127.0.0.1"
	}
	port := o.Port
	if port == 0 {
		port = -1
	}
	nodeKey, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("internal nats: node key: %w", err)
	}
	in := &Internal{
		log:       o.Log,
		nodeKey:   nodeKey,
		agents:    map[string]string{},
		workloads: map[string]workloadUser{},
	}
	nodeAcc := server.NewAccount(NodeAccount)
	wlAcc := server.NewAccount(WorkloadAccount)
	opts := &server.Options{
		ServerName:                 "nex-internal",
		Host:                       host,
		Port:                       port,
		JetStream:                  true,
		JetStreamDomain:            o.Domain,
		StoreDir:                   filepath.Join(o.StoreDir, "jetstream"),
		NoSigs:                     true,
		NoLog:                      true,
		MaxPayload:                 8 << 20,
		Accounts:                   []*server.Account{nodeAcc, wlAcc},
		AlwaysEnableNonce:          true,
		CustomClientAuthentication: in,
	}
	if o.LeafURL != nil {
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{{
			LocalAccount: WorkloadAccount,
			URLs:         []*url.URL{o.LeafURL},
			Credentials:  o.LeafCredentials,
			DenyImports:  workloadDenied,
			DenyExports:  workloadDenied,
		}}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("internal nats: %w", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, errors.New("internal nats: not ready after 10s")
	}
	in.srv, in.opts = s, opts
	if acc, err := s.LookupAccount(WorkloadAccount); err == nil {
		lim := map[string]server.JetStreamAccountLimits{"": {MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxConsumers: -1}}
		if err := acc.EnableJetStream(lim, nil); err != nil {
			o.Log.Warn("internal nats: jetstream for workloads not enabled", "error", err)
		}
	}
	return in, nil
}

// ClientURL is the loopback URL of the server.
func (in *Internal) ClientURL() string { return in.srv.ClientURL() }

// Server exposes the underlying server.
func (in *Internal) Server() *server.Server { return in.srv }

// ConnectNode opens the node's own connection (all subjects of the node
// account), in-process.
func (in *Internal) ConnectNode(name string, extra ...nats.Option) (*nats.Conn, error) {
	pub, _ := in.nodeKey.PublicKey()
	opts := append([]nats.Option{
		nats.Name(name),
		nats.InProcessServer(in.srv),
		nats.Nkey(pub, in.nodeKey.Sign),
		nats.MaxReconnects(-1),
	}, extra...)
	return nats.Connect("", opts...)
}

// AddAgent creates the nkey user of a sandbox's agent and returns its seed.
// The user may use only the sandbox's subjects and inbox.
func (in *Internal) AddAgent(sandboxID string) (seed string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", fmt.Errorf("agent key: %w", err)
	}
	pub, _ := kp.PublicKey()
	s, _ := kp.Seed()
	in.mu.Lock()
	in.agents[pub] = sandboxID
	in.mu.Unlock()
	return string(s), nil
}

// RemoveAgent revokes every agent user of the sandbox and closes their
// connections.
func (in *Internal) RemoveAgent(sandboxID string) {
	var keys []string
	in.mu.Lock()
	for k, id := range in.agents {
		if id == sandboxID {
			keys = append(keys, k)
			delete(in.agents, k)
		}
	}
	in.mu.Unlock()
	for _, k := range keys {
		in.disconnect(NodeAccount, func(c *server.ConnInfo) bool { return c.AuthorizedUser == k })
	}
}

// AddWorkloadUser creates a user of the workload account for one workload.
func (in *Internal) AddWorkloadUser(workloadID string) (user, password string) {
	user = "wl_" + workloadID
	password = randomToken()
	in.mu.Lock()
	in.workloads[user] = workloadUser{password: password}
	in.mu.Unlock()
	return user, password
}

// RemoveWorkloadUser revokes a workload's user and closes its connections.
func (in *Internal) RemoveWorkloadUser(workloadID string) {
	user := "wl_" + workloadID
	in.mu.Lock()
	delete(in.workloads, user)
	in.mu.Unlock()
	in.disconnect(WorkloadAccount, func(c *server.ConnInfo) bool { return c.AuthorizedUser == user })
}

func (in *Internal) disconnect(account string, match func(*server.ConnInfo) bool) {
	cz, err := in.srv.Connz(&server.ConnzOptions{Account: account, Username: true, Limit: 100000})
	if err != nil {
		return
	}
	for _, c := range cz.Conns {
		if match(c) {
			_ = in.srv.DisconnectClientByID(c.Cid)
		}
	}
}

// Users counts the live credentials: agent users and workload users.
func (in *Internal) Users() (agents, workloads int) {
	in.mu.RLock()
	defer in.mu.RUnlock()
	return len(in.agents), len(in.workloads)
}

// Shutdown stops the server.
func (in *Internal) Shutdown() {
	in.srv.Shutdown()
	in.srv.WaitForShutdown()
}

// Check implements server.Authentication.
func (in *Internal) Check(c server.ClientAuthentication) bool {
	o := c.GetOpts()
	switch {
	case o.Nkey != "":
		if !verifyNonce(o.Nkey, o.Sig, c.GetNonce()) {
			return false
		}
		nodePub, _ := in.nodeKey.PublicKey()
		if o.Nkey == nodePub {
			return in.register(c, o.Nkey, NodeAccount, nil)
		}
		in.mu.RLock()
		id, ok := in.agents[o.Nkey]
		in.mu.RUnlock()
		if !ok {
			return false
		}
		return in.register(c, o.Nkey, NodeAccount, agentPermissions(id))
	case o.Username != "":
		in.mu.RLock()
		u, ok := in.workloads[o.Username]
		in.mu.RUnlock()
		if !ok || o.Password != u.password {
			return false
		}
		return in.register(c, o.Username, WorkloadAccount, workloadPermissions())
	default:
		// A workload that was given a bare NATS URL (nats://127.0.0.1:4222 in
		// a VM) lands in the workload account with a workload's powers.
		return in.register(c, "anonymous", WorkloadAccount, workloadPermissions())
	}
}

func (in *Internal) register(c server.ClientAuthentication, user, account string, perms *server.Permissions) bool {
	acc, err := in.srv.LookupAccount(account)
	if err != nil {
		return false
	}
	c.RegisterUser(&server.User{Username: user, Account: acc, Permissions: perms})
	return true
}

func agentPermissions(id string) *server.Permissions {
	root := agentapi.SubjectRoot(id) + ".>"
	inbox := agentapi.InboxPrefix(id) + ".>"
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{root}},
		Subscribe: &server.SubjectPermission{Allow: []string{root, inbox}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

func workloadPermissions() *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Deny: workloadDenied},
		Subscribe: &server.SubjectPermission{Deny: workloadDenied},
	}
}

func verifyNonce(pub, sig string, nonce []byte) bool {
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return false
		}
	}
	return kp.Verify(nonce, raw) == nil
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
