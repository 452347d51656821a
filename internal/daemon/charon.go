package daemon

import (
	"context"

	"github.com/obol-ipsec/obol/vici"
)

// Charon is the part of the VICI client obold uses; *vici.Client satisfies
// it, and tests use a fake (daemon_test.go).
type Charon interface {
	Version(ctx context.Context) (vici.Version, error)
	Stats(ctx context.Context) (vici.Stats, error)
	LoadConn(ctx context.Context, conn vici.Conn) error
	UnloadConn(ctx context.Context, name string) error
	ConnNames(ctx context.Context) ([]string, error)
	ListSAs(ctx context.Context, sel vici.SASelector) ([]vici.IKESA, error)
	ListConns(ctx context.Context, name string) ([]vici.ConnInfo, error)
	ListCerts(ctx context.Context, filter vici.CertFilter) ([]vici.Cert, error)
	Initiate(ctx context.Context, ike, child string) error
	Terminate(ctx context.Context, sel vici.SASelector) error
	LoadShared(ctx context.Context, s vici.Shared) error
	UnloadShared(ctx context.Context, id string) error
	LoadKey(ctx context.Context, k vici.Key) (string, error)
	UnloadKey(ctx context.Context, id string) error
}

var _ Charon = (*vici.Client)(nil)
