package api

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Response types carried in Envelope.Type.
const (
	TypePingResponse     = "io.nats.nex.v1.ping_response"
	TypeWPingResponse    = "io.nats.nex.v1.wping_response"
	TypeInfoResponse     = "io.nats.nex.v1.info_response"
	TypeRunResponse      = "io.nats.nex.v1.run_response"
	TypeStopResponse     = "io.nats.nex.v1.stop_response"
	TypeLameDuckResponse = "io.nats.nex.v1.lameduck_response"
	TypeAuctionResponse  = "io.nats.nex.v1.auction_response"
)

// Envelope wraps every reply on a control subject.
type Envelope struct {
	Type  string          `json:"type"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
}

// NewEnvelope encodes data as the envelope of the given response type.
func NewEnvelope(typ string, data any) ([]byte, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", typ, err)
	}
	return json.Marshal(Envelope{Type: typ, Data: raw})
}

// ErrorEnvelope encodes a refusal. Data stays present (as the Nex 0.2 node
// sends it) so that clients decoding data unconditionally do not choke.
func ErrorEnvelope(typ string, err error) []byte {
	b, _ := json.Marshal(Envelope{Type: typ, Data: json.RawMessage("{}"), Error: err.Error()})
	return b
}

// RemoteError is an error a node returned in an envelope.
type RemoteError struct{ Msg string }

func (e *RemoteError) Error() string { return e.Msg }

// IsRemote reports whether err came from the node rather than the transport.
func IsRemote(err error) bool {
	var re *RemoteError
	return errors.As(err, &re)
}

// DecodeEnvelope opens an envelope into out; a node-side error becomes a
// *RemoteError.
func DecodeEnvelope(b []byte, out any) error {
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return fmt.Errorf("decode reply: %w", err)
	}
	if env.Error != "" {
		return &RemoteError{Msg: env.Error}
	}
	if out == nil || len(env.Data) == 0 {
		return nil
	}
	if err := json.Unmarshal(env.Data, out); err != nil {
		return fmt.Errorf("decode %s: %w", env.Type, err)
	}
	return nil
}
