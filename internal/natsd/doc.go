// Package natsd runs the embedded nats-servers of a node: the control-plane
// server `nex node up` starts when no NATS is around, and the node's internal
// server, where every agent and every workload gets its own scoped user.
package natsd
