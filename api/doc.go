// Package api holds the control-plane wire types of nex: the subjects a node
// serves, the JSON shapes of requests, replies, events and logs. Field names
// are the contract with Nex 0.2 clients (shared/PROTOCOL.md); add optional
// fields, never rename.
package api
