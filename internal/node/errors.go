package node

import "errors"

// Refusals a deploy or stop can get. Each crosses the wire as the text of an
// error envelope, wrapped with the detail a user needs to act.
var (
	ErrLameDuck        = errors.New("node is in lame-duck mode and accepts no new workloads")
	ErrWrongNode       = errors.New("request is addressed to another node")
	ErrBadRequest      = errors.New("invalid deploy request")
	ErrWorkloadType    = errors.New("workload type not allowed")
	ErrBadJWT          = errors.New("invalid workload JWT")
	ErrIssuer          = errors.New("issuer not allowed")
	ErrEnvironment     = errors.New("environment cannot be opened")
	ErrArtifact        = errors.New("artifact refused")
	ErrLimit           = errors.New("node limit reached")
	ErrUnknownWorkload = errors.New("no such workload")
	ErrStopDenied      = errors.New("stop refused")
	ErrSandbox         = errors.New("no sandbox for the workload")
	ErrStart           = errors.New("workload did not start")
	ErrShuttingDown    = errors.New("node is shutting down")
)
