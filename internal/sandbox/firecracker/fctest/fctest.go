// Package fctest stands in for Firecracker where there is none (no binary,
// no usable KVM). A Server serves the part of Firecracker's REST API that
// nex's firecracker driver uses, on a unix socket: GET /, PUT
// /machine-config, /boot-source, /vsock and /actions (InstanceStart,
// SendCtrlAltDel). It checks bodies and order the way Firecracker does —
// unknown or missing fields, out-of-range values, unreadable kernel or initrd,
// configuration after start, start without a kernel — and answers refusals
// with 400 and {"fault_message": …}. It records every request so tests can
// assert order and payloads.
//
// On InstanceStart it boots the configured machine with its Booter: QEMU
// (package qemu's microvm under TCG) for VM tests, or nothing at all for
// API-only tests. QEMU here has no vhost-vsock, so the QEMU booter maps the
// vsock device onto user-mode networking; see QEMU.
//
// cmd/fcserver is the same server as a program that takes --api-sock, so the
// driver runs it in place of the firecracker binary and its process handling
// is exercised too. This is a test helper: it is not Firecracker, and passing
// against it says nothing about KVM, Firecracker's devices or its vsock.
package fctest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"
)

// Request is one request the server answered.
type Request struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

// MachineConfig, BootSource, Vsock and Action are the request bodies, with
// Firecracker's field names; pointer fields tell "missing" from zero. They
// are declared here rather than shared with the driver so that a misspelt
// field on either side is a refusal, as it would be from Firecracker.
type MachineConfig struct {
	VCPUCount       *int    `json:"vcpu_count"`
	MemSizeMiB      *int    `json:"mem_size_mib"`
	SMT             *bool   `json:"smt,omitempty"`
	TrackDirtyPages *bool   `json:"track_dirty_pages,omitempty"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	HugePages       *string `json:"huge_pages,omitempty"`
}

type BootSource struct {
	KernelImagePath *string `json:"kernel_image_path"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
	BootArgs        *string `json:"boot_args,omitempty"`
}

type Vsock struct {
	GuestCID *uint32 `json:"guest_cid"`
	UDSPath  *string `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"` // deprecated, accepted
}

type Action struct {
	ActionType *string `json:"action_type"`
}

// Machine is what InstanceStart boots.
type Machine struct {
	VCPUCount  int
	MemSizeMiB int
	Kernel     string
	Initrd     string // "" when none was given
	BootArgs   string
	// VsockUDS is the vsock device's uds_path ("" without a device): the
	// guest's connections to host port P go to VsockUDS+"_P".
	VsockUDS string
	GuestCID uint32
}

// Booter boots a configured machine.
type Booter interface {
	Boot(m Machine) (VM, error)
}

// VM is a booted machine.
type VM interface {
	// Done is closed when the machine has ended; Err then tells why (nil:
	// the guest ended it).
	Done() <-chan struct{}
	Err() error
	// CtrlAltDel does what Firecracker's SendCtrlAltDel does to a guest.
	CtrlAltDel() error
	Kill()
}

// Firecracker's defaults and limits.
const (
	defaultVCPU   = 1
	defaultMemMiB = 128
	maxVCPU       = 32
	minGuestCID   = 3
)

// Fault messages, as close to Firecracker's as is useful.
const (
	faultAfterStart  = "The requested operation is not supported after starting the microVM."
	faultBeforeStart = "The requested operation is not supported before starting the microVM."
	faultNoKernel    = "Start microvm error: Cannot start microvm without kernel configuration."
)

// Options configure a Server.
type Options struct {
	// ID is the instance id GET / reports (Firecracker's --id).
	ID string
	// Booter boots on InstanceStart; nil boots nothing (the machine then
	// "runs" until SendCtrlAltDel or Close).
	Booter Booter
	// Record, when set, gets each answered request as one JSON line.
	Record io.Writer
	Log    *slog.Logger
}

// Server is the API stand-in; it implements http.Handler.
type Server struct {
	o Options

	mu       sync.Mutex
	requests []Request
	machine  Machine
	hasBoot  bool
	vsockLn  net.Listener
	vm       VM
	started  chan struct{} // closed on a successful InstanceStart
}

// New returns a server in Firecracker's initial state: 1 vCPU, 128 MiB, no
// boot source, no vsock, not started.
func New(o Options) *Server {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ID == "" {
		o.ID = "anonymous-instance"
	}
	return &Server{
		o:       o,
		machine: Machine{VCPUCount: defaultVCPU, MemSizeMiB: defaultMemMiB},
		started: make(chan struct{}),
	}
}

// Requests are the requests answered so far, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Started is closed once InstanceStart has succeeded.
func (s *Server) Started() <-chan struct{} { return s.started }

// VM is the booted machine; nil before InstanceStart.
func (s *Server) VM() VM {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vm
}

// Close kills the machine, if one runs, and releases the vsock socket.
func (s *Server) Close() {
	s.mu.Lock()
	vm, ln := s.vm, s.vsockLn
	s.mu.Unlock()
	if vm != nil {
		vm.Kill()
		<-vm.Done()
	}
	if ln != nil {
		ln.Close()
	}
}

// apiError is a refusal: its status and fault message.
type apiError struct {
	status int
	fault  string
}

func (e *apiError) Error() string { return e.fault }

func badRequest(format string, a ...any) *apiError {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

// maxBody bounds a request body (Firecracker's default limit is 51200).
const maxBody = 51200

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	var status int
	var out any
	switch {
	case err != nil:
		err = badRequest("reading the request body: %v", err)
	case len(body) > maxBody:
		err = &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.", len(body), maxBody)}
	default:
		status, out, err = s.route(r.Method, r.URL.Path, body)
	}
	rec := Request{Method: r.Method, Path: r.URL.Path, Status: status}
	if json.Valid(body) {
		rec.Body = json.RawMessage(bytes.Clone(body))
	}
	var ae *apiError
	if errors.As(err, &ae) {
		rec.Status, rec.Fault = ae.status, ae.fault
	} else if err != nil {
		rec.Status, rec.Fault = http.StatusInternalServerError, err.Error()
	}
	s.record(rec)
	w.Header().Set("Content-Type", "application/json")
	switch {
	case rec.Fault != "":
		w.WriteHeader(rec.Status)
		_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": rec.Fault})
	case out != nil:
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(out)
	default:
		w.WriteHeader(status)
	}
}

func (s *Server) record(r Request) {
	s.mu.Lock()
	s.requests = append(s.requests, r)
	s.mu.Unlock()
	s.o.Log.Debug("api request", "method", r.Method, "path", r.Path, "status", r.Status, "fault", r.Fault)
	if s.o.Record != nil {
		b, _ := json.Marshal(r)
		_, _ = s.o.Record.Write(append(b, '\n'))
	}
}

func (s *Server) route(method, path string, body []byte) (int, any, error) {
	type handler func([]byte) error
	puts := map[string]handler{
		"/machine-config": s.putMachineConfig,
		"/boot-source":    s.putBootSource,
		"/vsock":          s.putVsock,
		"/actions":        s.putAction,
	}
	switch {
	case method == http.MethodGet && path == "/":
		return http.StatusOK, s.describe(), nil
	case method == http.MethodPut && puts[path] != nil:
		return http.StatusNoContent, nil, puts[path](body)
	}
	return 0, nil, badRequest("Invalid request method and/or path: %s %s.", method, path)
}

// InstanceInfo is GET /'s answer.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// Version is what GET / and fcserver --version report.
const Version = "0.0.0-fctest"

func (s *Server) describe() InstanceInfo {
	state := "Not started"
	select {
	case <-s.started:
		state = "Running"
	default:
	}
	return InstanceInfo{ID: s.o.ID, State: state, VMMVersion: Version, AppName: "Firecracker"}
}

// decode reads a body strictly: unknown fields are refused, as Firecracker's
// deserializer refuses them.
func decode(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("An error occurred when deserializing the json body of a request: %v.", err)
	}
	if dec.More() {
		return badRequest("An error occurred when deserializing the json body of a request: trailing data.")
	}
	return nil
}

// preBoot refuses configuration once the machine runs.
func (s *Server) preBoot() error {
	select {
	case <-s.started:
		return badRequest(faultAfterStart)
	default:
		return nil
	}
}

func (s *Server) putMachineConfig(body []byte) error {
	var m MachineConfig
	if err := decode(body, &m); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.preBoot(); err != nil {
		return err
	}
	switch {
	case m.VCPUCount == nil:
		return badRequest("An error occurred when deserializing the json body of a request: missing field `vcpu_count`.")
	case m.MemSizeMiB == nil:
		return badRequest("An error occurred when deserializing the json body of a request: missing field `mem_size_mib`.")
	case *m.VCPUCount < 1 || *m.VCPUCount > maxVCPU:
		return badRequest("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.")
	case *m.MemSizeMiB < 1:
		return badRequest("The memory size (MiB) is invalid.")
	}
	s.machine.VCPUCount, s.machine.MemSizeMiB = *m.VCPUCount, *m.MemSizeMiB
	return nil
}

func (s *Server) putBootSource(body []byte) error {
	var b BootSource
	if err := decode(body, &b); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.preBoot(); err != nil {
		return err
	}
	if b.KernelImagePath == nil {
		return badRequest("An error occurred when deserializing the json body of a request: missing field `kernel_image_path`.")
	}
	// Firecracker opens both files when the boot source is set.
	if err := readable(*b.KernelImagePath); err != nil {
		return badRequest("The kernel file cannot be opened: %v", err)
	}
	m := s.machine
	m.Kernel, m.Initrd, m.BootArgs = *b.KernelImagePath, "", ""
	if b.InitrdPath != nil {
		if err := readable(*b.InitrdPath); err != nil {
			return badRequest("The initrd file cannot be opened due to invalid path or invalid permissions. %v", err)
		}
		m.Initrd = *b.InitrdPath
	}
	if b.BootArgs != nil {
		m.BootArgs = *b.BootArgs
	}
	s.machine, s.hasBoot = m, true
	return nil
}

func readable(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	return f.Close()
}

// putVsock binds uds_path at once, as Firecracker does, so a path in use is
// refused here. Connections made to it (host-initiated, "CONNECT <port>")
// are not emulated: they are closed.
func (s *Server) putVsock(body []byte) error {
	var v Vsock
	if err := decode(body, &v); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.preBoot(); err != nil {
		return err
	}
	switch {
	case v.GuestCID == nil:
		return badRequest("An error occurred when deserializing the json body of a request: missing field `guest_cid`.")
	case v.UDSPath == nil:
		return badRequest("An error occurred when deserializing the json body of a request: missing field `uds_path`.")
	case *v.GuestCID < minGuestCID:
		return badRequest("Cannot create backend for vsock device: guest CID %d is reserved (must be at least %d)", *v.GuestCID, minGuestCID)
	}
	if s.vsockLn != nil {
		s.vsockLn.Close()
		s.vsockLn = nil
	}
	ln, err := net.Listen("unix", *v.UDSPath)
	if err != nil {
		return badRequest("Cannot create backend for vsock device: %v", err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	s.vsockLn = ln
	s.machine.VsockUDS, s.machine.GuestCID = *v.UDSPath, *v.GuestCID
	return nil
}

func (s *Server) putAction(body []byte) error {
	var a Action
	if err := decode(body, &a); err != nil {
		return err
	}
	if a.ActionType == nil {
		return badRequest("An error occurred when deserializing the json body of a request: missing field `action_type`.")
	}
	switch *a.ActionType {
	case "InstanceStart":
		return s.instanceStart()
	case "SendCtrlAltDel":
		s.mu.Lock()
		vm := s.vm
		s.mu.Unlock()
		if vm == nil {
			return badRequest(faultBeforeStart)
		}
		if err := vm.CtrlAltDel(); err != nil {
			return badRequest("SendCtrlAltDel: %v", err)
		}
		return nil
	case "FlushMetrics":
		return badRequest("fctest: FlushMetrics is not emulated (no metrics)")
	}
	return badRequest("An error occurred when deserializing the json body of a request: unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`.", *a.ActionType)
}

func (s *Server) instanceStart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.preBoot(); err != nil {
		return err
	}
	if !s.hasBoot {
		return badRequest(faultNoKernel)
	}
	booter := s.o.Booter
	if booter == nil {
		booter = idle{}
	}
	vm, err := booter.Boot(s.machine)
	if err != nil {
		return badRequest("Start microvm error: %v", err)
	}
	s.vm = vm
	close(s.started)
	s.o.Log.Info("machine started", "vcpus", s.machine.VCPUCount, "mem_mib", s.machine.MemSizeMiB)
	return nil
}

// idle is the Booter of API-only tests: the machine "runs" until
// Ctrl+Alt+Del (which ends a real guest at once) or Kill.
type idle struct{}

func (idle) Boot(Machine) (VM, error) { return &idleVM{done: make(chan struct{})}, nil }

type idleVM struct {
	once sync.Once
	done chan struct{}
	err  error
}

func (v *idleVM) Done() <-chan struct{} { return v.done }
func (v *idleVM) Err() error            { <-v.done; return v.err }
func (v *idleVM) CtrlAltDel() error     { v.end(nil); return nil }
func (v *idleVM) Kill()                 { v.end(errors.New("killed")) }
func (v *idleVM) end(err error)         { v.once.Do(func() { v.err = err; close(v.done) }) }

// Serve listens on the unix socket sock and serves until the booted machine
// ends or the listener fails; it returns the machine's Err.
func (s *Server) Serve(sock string) error {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("api socket: %w", err)
	}
	hs := &http.Server{Handler: s}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()
	select {
	case err := <-served:
		s.Close()
		return err
	case <-s.started:
	}
	vm := s.VM()
	select {
	case err := <-served:
		s.Close()
		return err
	case <-vm.Done():
	}
	// Let an answer in flight (SendCtrlAltDel's) go out before the process
	// ends, as Firecracker's does.
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_ = hs.Shutdown(ctx)
	cancel()
	s.Close()
	return vm.Err()
}
