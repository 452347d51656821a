package vici

import (
	"errors"
	"fmt"
	"strings"
)

var (
	// ErrUnavailable wraps every failure to reach charon: no socket, refused,
	// or charon went away during the call.
	ErrUnavailable = errors.New("charon is not answering")
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("vici: client is closed")
	// ErrMalformed wraps every error about data charon sent that obol cannot
	// decode (see MalformedError).
	ErrMalformed = errors.New("vici: malformed message from charon")
)

// CommandError is charon refusing a command (success = no).
type CommandError struct {
	Command string // VICI command, e.g. "initiate"
	Target  string // what it was about, e.g. `child "net" of conn "gw-gw"`; may be empty
	Msg     string // charon's errmsg
	// Log holds the last relevant control-log lines charon sent during an
	// initiate or terminate, oldest first.
	Log []string
}

func (e *CommandError) Error() string {
	var b strings.Builder
	b.WriteString("vici: ")
	b.WriteString(e.Command)
	if e.Target != "" {
		b.WriteString(" ")
		b.WriteString(e.Target)
	}
	b.WriteString(": charon says: ")
	if e.Msg == "" {
		b.WriteString("failed without a reason")
	} else {
		b.WriteString(e.Msg)
	}
	if len(e.Log) > 0 {
		b.WriteString(" (charon log: ")
		for i, l := range e.Log {
			if i > 0 {
				b.WriteString("; ")
			}
			b.WriteString(l)
		}
		b.WriteString(")")
	}
	if h := hint(e.Command); h != "" {
		b.WriteString(": ")
		b.WriteString(h)
	}
	return b.String()
}

// hint says what to do after charon refused cmd.
func hint(cmd string) string {
	switch cmd {
	case "initiate":
		return "check both peers' conns, credentials and reachability; charon's log has the details"
	case "terminate", "rekey":
		return "list-sas shows what exists"
	case "load-conn":
		return "fix the conn's settings (swanctl.conf(5) names the valid values)"
	case "unload-conn":
		return "get-conns lists the loaded conns"
	case "load-key", "load-shared":
		return "check the credential's type and encoding"
	default:
		return "charon's log has the details"
	}
}

// MalformedError says where in which message charon sent something obol
// cannot decode. errors.Is(err, ErrMalformed) holds for it.
type MalformedError struct {
	Where   string // e.g. `list-sas: IKE_SA gw-gw #3: child net #4`
	Field   string // e.g. "bytes-in"
	Problem string // e.g. `"x" is not a number`
}

func (e *MalformedError) Error() string {
	if e.Field == "" {
		return e.Where + ": " + e.Problem
	}
	return e.Where + ": " + e.Field + ": " + e.Problem
}

// Is makes errors.Is(err, ErrMalformed) true.
func (e *MalformedError) Is(target error) bool { return target == ErrMalformed }

func malformed(where, field, format string, args ...any) *MalformedError {
	return &MalformedError{Where: where, Field: field, Problem: fmt.Sprintf(format, args...)}
}
