package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// The part of Firecracker's REST API the driver uses (field names from
// Firecracker's swagger definition). Every PUT answers 204 No Content on
// success and 400 with {"fault_message": "…"} when Firecracker refuses.

// MachineConfig is the body of PUT /machine-config.
type MachineConfig struct {
	VCPUCount  int `json:"vcpu_count"`
	MemSizeMiB int `json:"mem_size_mib"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

// Vsock is the body of PUT /vsock. (vsock_id is deprecated since
// Firecracker 1.0 and left out.)
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// ActionType is the action_type of PUT /actions.
type ActionType string

// Actions the driver performs.
const (
	InstanceStart  ActionType = "InstanceStart"
	SendCtrlAltDel ActionType = "SendCtrlAltDel"
)

// InstanceInfo is the answer to GET /.
type InstanceInfo struct {
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
	AppName    string `json:"app_name"`
}

// APIError is a refusal by the API: the request, the HTTP status, and
// Firecracker's fault_message.
type APIError struct {
	Method, Path string
	Status       int
	Fault        string
}

func (e *APIError) Error() string {
	msg := fmt.Sprintf("%s %s: %d %s", e.Method, e.Path, e.Status, http.StatusText(e.Status))
	if e.Fault != "" {
		msg += ": " + e.Fault
	}
	return msg
}

// maxErrorBody bounds what is read of an error answer.
const maxErrorBody = 64 << 10

// Client speaks Firecracker's API on its unix socket. Its zero value is not
// usable; make one with NewClient.
type Client struct {
	sock string
	hc   *http.Client
}

// NewClient returns a client of the API socket at sock. Requests are bounded
// by their ctx only.
func NewClient(sock string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// One VMM, one caller at a time: a single idle connection is all
		// the reuse there is.
		MaxIdleConns:       1,
		DisableCompression: true,
	}
	return &Client{sock: sock, hc: &http.Client{Transport: tr}}
}

// Socket is the API socket's path.
func (c *Client) Socket() string { return c.sock }

// Close drops the idle connection to the API.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Describe is GET /: the instance's id, state and Firecracker's version. The
// driver uses it to learn that the API is up.
func (c *Client) Describe(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// PutMachineConfig sets the vCPUs and memory (pre-boot only).
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfig) error {
	return c.do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource sets the kernel, initrd and kernel command line (pre-boot
// only).
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutVsock adds the vsock device (pre-boot only).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// Action performs a synchronous action: InstanceStart boots the configured
// machine, SendCtrlAltDel presses the keys on the guest's keyboard.
func (c *Client) Action(ctx context.Context, a ActionType) error {
	return c.do(ctx, http.MethodPut, "/actions", struct {
		ActionType ActionType `json:"action_type"`
	}{a}, nil)
}

// do sends one request; a status other than 2xx becomes an *APIError with
// Firecracker's fault_message. out, when not nil, receives a JSON answer.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host part is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return apiError(method, path, resp)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// apiError reads Firecracker's {"fault_message": …}; an answer that is not
// one (a proxy's, a crash's) is quoted as it came.
func apiError(method, path string, resp *http.Response) error {
	e := &APIError{Method: method, Path: path, Status: resp.StatusCode}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(b, &f) == nil && f.FaultMessage != "" {
		e.Fault = f.FaultMessage
	} else {
		e.Fault = strings.TrimSpace(string(b))
	}
	return e
}
