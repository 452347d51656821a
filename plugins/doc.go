// Package plugins holds obol's module contracts: the Go interfaces through
// which obold uses its resolver, label policy, XFRM checks and token API.
//
// obold never calls a module's implementation directly: it gets a Modules
// value and calls through these interfaces. Each module runs built in (the
// default: a plain Go value, no RPC on hot paths) or, later, as an external
// go-plugin process named in TOML; both forms satisfy the same interface, so
// one conformance suite can test both.
//
// A contract is small on purpose: the smaller it is, the cheaper it is to
// serve over gRPC and the easier to fake in tests (see pluginstest).
package plugins
