// Package control is the protocol between obold and obolctl: one JSON
// request per line on a unix socket, one JSON response per line back.
// Only root, or members of one configured group, may connect.
package control

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Version is the protocol version. A request for another version is refused.
const Version = 1

// MaxLine bounds a request or response line.
const MaxLine = 4 << 20

// Request is one call.
type Request struct {
	V      int             `json:"v"`
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Response answers one Request: Result or Error, never both.
type Response struct {
	V      int             `json:"v"`
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a failed call. Code is stable for programs; Message is for people.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// Error codes.
const (
	CodeBadRequest    = "bad_request"
	CodeUnknownMethod = "unknown_method"
	CodeVersion       = "version"
	CodeFailed        = "failed"
	CodeCharonDown    = "charon_down"
)

// DecodeRequest parses one request line and checks it.
func DecodeRequest(line []byte) (Request, *Error) {
	var r Request
	if err := json.Unmarshal(line, &r); err != nil {
		return r, &Error{CodeBadRequest, fmt.Sprintf("request is not valid JSON: %v; send one JSON object per line: {\"v\":1,\"method\":\"status\"}", err)}
	}
	if r.V != Version {
		return r, &Error{CodeVersion, fmt.Sprintf("request is for protocol version %d, obold speaks %d; use an obolctl of the same release", r.V, Version)}
	}
	if r.Method == "" {
		return r, &Error{CodeBadRequest, "request has no method; set \"method\", e.g. \"status\""}
	}
	return r, nil
}

// AsError makes any error a control *Error for the wire.
func AsError(err error) *Error {
	var ce *Error
	if errors.As(err, &ce) {
		return ce
	}
	return &Error{CodeFailed, err.Error()}
}
