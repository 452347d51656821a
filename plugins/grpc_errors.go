package plugins

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// CallError is a module call that did not get an answer: the plugin process
// is gone, hung past the deadline, or the transport broke. The host treats
// it as the plugin's failure (restart with backoff).
type CallError struct {
	Module, Call string
	Code         codes.Code
	Err          error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("%s plugin: %s: %v", e.Module, e.Call, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// GarbageError is an answer that breaks the contract (an address that is
// no address, a key of the wrong size): the plugin is faulty, the answer is
// not used.
type GarbageError struct {
	Module, Call string
	Err          error
}

func (e *GarbageError) Error() string {
	return fmt.Sprintf("%s plugin: %s answered garbage: %v; the answer was not used", e.Module, e.Call, e.Err)
}

func (e *GarbageError) Unwrap() error { return e.Err }

// callError classifies a gRPC error. A plain error the module returned is
// not a CallError: it travels as text (status Unknown) and means the module
// answered.
func callError(module, call string, err error) error {
	st, _ := status.FromError(err)
	switch st.Code() {
	case codes.Unknown, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition:
		return fmt.Errorf("%s plugin: %s: %s", module, call, st.Message())
	case codes.DeadlineExceeded:
		return &CallError{Module: module, Call: call, Code: st.Code(), Err: fmt.Errorf("no answer before the deadline: %w", context.DeadlineExceeded)}
	case codes.Canceled:
		return &CallError{Module: module, Call: call, Code: st.Code(), Err: context.Canceled}
	}
	return &CallError{Module: module, Call: call, Code: st.Code(), Err: errors.New(st.Message())}
}

// IsPluginFault says whether err means the plugin itself failed (gone, hung,
// garbage) rather than answered with an error of its own.
func IsPluginFault(err error) bool {
	var ce *CallError
	var ge *GarbageError
	if errors.As(err, &ce) {
		return ce.Code != codes.Canceled
	}
	return errors.As(err, &ge)
}
