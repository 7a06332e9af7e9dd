package firecracker

import (
	"errors"
	"net"

	"github.com/nex-engine/nex/internal/agentapi"
	"github.com/nex-engine/nex/internal/splice"
)

// The host side of the guest's vsock. For a guest connection to host port P
// Firecracker connects to the unix socket "<uds_path>_P" (and resets the
// guest's connection when nobody listens there); the bytes then flow
// unchanged. The guest connects to agentapi.NATSVsockPort only: the driver
// listens on that one socket and splices each connection to the node's
// internal NATS, so the guest reaches nothing else on the host.

func (v *vm) listenVsock() error {
	ln, err := net.Listen("unix", v.vsockPortPath(agentapi.NATSVsockPort))
	if err != nil {
		return err
	}
	v.vsockMu.Lock()
	defer v.vsockMu.Unlock()
	if v.vsockClosed { // Firecracker has already exited
		ln.Close()
		return errors.New("firecracker exited")
	}
	v.vsockLn = ln
	go v.serveVsock(ln)
	return nil
}

// closeVsock closes the listener, which removes its socket, before the VM is
// reported done; forwards end with proxyCtx.
func (v *vm) closeVsock() {
	v.vsockMu.Lock()
	v.vsockClosed = true
	ln := v.vsockLn
	v.vsockMu.Unlock()
	if ln != nil {
		ln.Close()
	}
}

// serveVsock forwards every connection until the listener is closed.
func (v *vm) serveVsock(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				v.log.Warn("vsock accept", "error", err)
			}
			return
		}
		go v.forward(c)
	}
}

// forward splices one guest connection to the node's NATS; the VM's end
// closes both.
func (v *vm) forward(guest net.Conn) {
	ctx := v.proxyCtx
	var d net.Dialer
	up, err := d.DialContext(ctx, "tcp", v.nats)
	if err != nil {
		v.log.Warn("vsock forward: dial node nats", "addr", v.nats, "error", err)
		guest.Close()
		return
	}
	splice.Conns(ctx, guest, up)
}
