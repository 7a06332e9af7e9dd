package api

import "strings"

// Prefix of every control subject.
const Prefix = "$NEX"

// DefaultNamespace is used when a request names none.
const DefaultNamespace = "default"

// SystemNamespace carries node-level events.
const SystemNamespace = "system"

// Control subjects served by a node.
func PingSubject() string                  { return Prefix + ".PING" }
func PingNodeSubject(node string) string   { return Prefix + ".PING." + node }
func AuctionSubject() string               { return Prefix + ".AUCTION" }
func LameDuckSubject(node string) string   { return Prefix + ".LAMEDUCK." + node }
func InfoSubject(ns, node string) string   { return Prefix + ".INFO." + ns + "." + node }
func DeploySubject(ns, node string) string { return Prefix + ".DEPLOY." + ns + "." + node }
func StopSubject(ns, node string) string   { return Prefix + ".STOP." + ns + "." + node }

// WPingSubject targets nodes running workloads of ns; idOrName may be empty.
func WPingSubject(ns, idOrName string) string {
	if idOrName == "" {
		return Prefix + ".WPING." + ns
	}
	return Prefix + ".WPING." + ns + "." + idOrName
}

// EventSubject is where events of a namespace are published.
func EventSubject(ns, eventType string) string {
	return Prefix + ".events." + ns + "." + eventType
}

// LogSubject is where a workload's log lines are published.
func LogSubject(ns, node, workloadID, name string) string {
	s := Prefix + ".logs." + ns + "." + node + "." + workloadID
	if name != "" {
		s += "." + name
	}
	return s
}

// Token returns the n-th dot-separated token of subject, or "".
func Token(subject string, n int) string {
	parts := strings.Split(subject, ".")
	if n < 0 || n >= len(parts) {
		return ""
	}
	return parts[n]
}
