package tokenapi

import (
	"fmt"
	"path/filepath"
	"time"
)

// Config is the [tokenapi] table of obold.toml.
type Config struct {
	// Socket is where the server listens (SOCK_SEQPACKET).
	Socket string `toml:"socket"`
	// Mode is the socket file's permission bits. Any local program may ask
	// about the sockets it holds, so the default is 0666; restrict with a
	// smaller mode plus Group, or with AllowUIDs/AllowGIDs.
	Mode uint32 `toml:"mode"`
	// Group, when set, owns the socket file (name or number).
	Group string `toml:"group"`
	// AllowUIDs/AllowGIDs, when either is non-empty, admit only clients
	// whose SO_PEERCRED uid or gid is listed; root is always admitted.
	AllowUIDs []uint32 `toml:"allow_uids"`
	AllowGIDs []uint32 `toml:"allow_gids"`
	// UntrustedCiphers are charon ESP cipher names ("3DES_CBC") or name and
	// key size ("AES_CBC_128") the administrator does not trust: SAs using
	// them report privacyProtected false, like ESP-NULL.
	UntrustedCiphers []string `toml:"untrusted_ciphers"`
	// MaxClients bounds concurrent client connections.
	MaxClients int `toml:"max_clients"`
	// MaxPTokens bounds the live pTokens of one client connection.
	MaxPTokens int `toml:"max_ptokens_per_client"`
	// MaxSubscriptions bounds the event subscriptions of one connection.
	MaxSubscriptions int `toml:"max_subscriptions_per_client"`
	// MaxQueuedEvents bounds the events waiting for one connection's
	// reader; a reader that lets more pile up is disconnected.
	MaxQueuedEvents int `toml:"max_queued_events"`
	// RequestTimeout bounds one request, the Facts lookup included.
	RequestTimeout time.Duration `toml:"request_timeout"`
	// ProtectTimeout bounds one PROTECT request: DNS and an IKE
	// negotiation may run in it.
	ProtectTimeout time.Duration `toml:"protect_timeout"`
	// LowerGroups name groups (name or number) whose members may ask for
	// less protection than system policy (PROTECT with CLEAR), besides
	// callers with CAP_NET_ADMIN. System policy (private, block,
	// configured tunnels) still wins.
	LowerGroups []string `toml:"lower_groups"`
}

// Defaults.
const (
	DefaultSocket         = "/run/obol/token.sock"
	DefaultMode           = 0o666
	DefaultMaxClients     = 256
	DefaultMaxPTokens     = 1024
	DefaultRequestTimeout = 2 * time.Second
	DefaultMaxSubs        = 64
	DefaultMaxQueued      = 64
	DefaultProtectTimeout = 20 * time.Second
)

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Socket == "" {
		c.Socket = DefaultSocket
	}
	if c.Mode == 0 {
		c.Mode = DefaultMode
	}
	if c.MaxClients == 0 {
		c.MaxClients = DefaultMaxClients
	}
	if c.MaxPTokens == 0 {
		c.MaxPTokens = DefaultMaxPTokens
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubs
	}
	if c.MaxQueuedEvents == 0 {
		c.MaxQueuedEvents = DefaultMaxQueued
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ProtectTimeout == 0 {
		c.ProtectTimeout = DefaultProtectTimeout
	}
	return c
}

// Validate reports the first invalid field, saying what to write instead.
func (c Config) Validate() error {
	switch {
	case !filepath.IsAbs(c.Socket):
		return fmt.Errorf("tokenapi.socket %q: must be an absolute path such as %q", c.Socket, DefaultSocket)
	case len(c.Socket) >= 108:
		return fmt.Errorf("tokenapi.socket %q: longer than a unix socket path may be (107 bytes); choose a shorter path", c.Socket)
	case c.Mode > 0o777:
		return fmt.Errorf("tokenapi.mode %o: permission bits only, e.g. 0o660", c.Mode)
	case c.MaxClients < 0 || c.MaxPTokens < 0:
		return fmt.Errorf("tokenapi.max_clients and max_ptokens_per_client must be positive")
	case c.MaxSubscriptions < 0 || c.MaxQueuedEvents < 0:
		return fmt.Errorf("tokenapi.max_subscriptions_per_client and max_queued_events must be positive")
	case c.RequestTimeout < 0:
		return fmt.Errorf("tokenapi.request_timeout must be positive, e.g. \"2s\"")
	case c.ProtectTimeout < 0:
		return fmt.Errorf("tokenapi.protect_timeout must be positive, e.g. \"20s\"")
	}

	for _, u := range c.UntrustedCiphers {
		if u == "" {
			return fmt.Errorf("tokenapi.untrusted_ciphers: empty name; write charon's cipher name, e.g. \"3DES_CBC\" or \"AES_CBC_128\"")
		}
	}
	return nil
}

// CheckGroup says whether g names an existing group (name or number).
func CheckGroup(g string) error {
	if g == "" {
		return fmt.Errorf("empty group name; write a group name such as \"netadmin\" or a gid")
	}
	if _, err := lookupGID(g); err != nil {
		return fmt.Errorf("group %q does not exist (%v); create it or remove it from the list", g, err)
	}
	return nil
}
