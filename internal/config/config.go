// Package config reads obold's TOML configuration strictly: unknown keys,
// wrong types and bad values are all refused, each reported as
// "FILE:LINE: what is wrong; what to write instead".
package config

import (
	"errors"
	"fmt"
	"github.com/obol-ipsec/obol/internal/authmethod"
	"os"
	"path/filepath"

	"github.com/obol-ipsec/obol/internal/labels"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/tokenapi"
)

// Config is obold's configuration.
type Config struct {
	// File is the path the config was read from; relative paths in it are
	// resolved against its directory.
	File    string  `toml:"-"`
	Charon  Charon  `toml:"charon"`
	Obold   Obold   `toml:"obold"`
	Control Control `toml:"control"`
	Log     Log     `toml:"log"`
	Conns   []Conn  `toml:"conn"`
	// Labels is the label policy module's configuration ([labels]).
	Labels labels.Config `toml:"labels"`
	// OE is opportunistic encryption ([oe]); off without [[oe.group]].
	OE oe.Config `toml:"oe"`
	// TokenAPI is the application token API ([tokenapi]).
	TokenAPI TokenAPI `toml:"tokenapi"`
	// Modules says which modules run as external go-plugin processes
	// ([modules.resolver], [modules.labels], [modules.xfrm], [modules.tokenapi]); a module
	// without a section runs built in.
	Modules Modules `toml:"modules"`
	// Auth says how OE peers' keys are found and trusted ([auth]).
	Auth AuthMethods `toml:"auth"`
}

// AuthMethods is [auth]: the methods' own settings, and the external ones.
type AuthMethods struct {
	authmethod.Config
	Plugins []AuthPlugin `toml:"plugin"`
}

// AuthPlugin is one [[auth.plugin]]: an external authentication method.
type AuthPlugin struct {
	Name string `toml:"name"`
	Plugin
}

// Modules names the external plugin of each module that has one.
type Modules struct {
	Resolver Plugin `toml:"resolver"`
	Labels   Plugin `toml:"labels"`
	XFRM     Plugin `toml:"xfrm"`
	// TokenAPI runs the token API module in its own process; it listens
	// on [tokenapi] socket there and asks obold about SAs over the plugin
	// connection. It needs [tokenapi] enabled.
	TokenAPI Plugin `toml:"tokenapi"`
}

// Plugin is one module run as an external go-plugin binary.
type Plugin struct {
	// Path is the plugin binary; "" runs the module built in.
	Path string   `toml:"plugin"`
	Args []string `toml:"args"`
	Env  []string `toml:"env"`
	// CallTimeout bounds one call; a plugin that takes longer is killed
	// and restarted (default 3s).
	CallTimeout Duration `toml:"call_timeout"`
	// MaxBackoff bounds the wait between restarts (default 10s).
	MaxBackoff Duration `toml:"max_backoff"`
}

// External says whether the module runs as a plugin process.
func (p Plugin) External() bool { return p.Path != "" }

// TokenAPI switches the token API module on; its keys are tokenapi.Config's.
type TokenAPI struct {
	Enabled bool `toml:"enabled"`
	tokenapi.Config
}

// Charon says how to reach charon.
type Charon struct {
	VICISocket  string   `toml:"vici_socket"`
	CallTimeout Duration `toml:"call_timeout"`
}

// Obold holds the daemon's own settings.
type Obold struct {
	// ConnPrefix marks the charon conns obold owns; it never touches others.
	ConnPrefix string `toml:"conn_prefix"`
	OnStop     OnStop `toml:"on_stop"`
	// ReconcileInterval is how often obold checks that its conns are still
	// loaded: `swanctl --load-all` unloads every conn not in swanctl's files,
	// obold's too, and obold puts them back.
	ReconcileInterval Duration `toml:"reconcile_interval"`
}

// Control is the socket obolctl talks to.
type Control struct {
	Socket string   `toml:"socket"`
	Mode   FileMode `toml:"mode"`
	// Group may use the socket besides root ("" for root only).
	Group string `toml:"group"`
}

// Log configures slog.
type Log struct {
	Level  LogLevel  `toml:"level"`
	Format LogFormat `toml:"format"`
}

// Conn is a connection obold loads into charon as ConnPrefix+Name.
type Conn struct {
	Name        Name     `toml:"name"`
	Version     int      `toml:"version"`
	LocalAddrs  []Addr   `toml:"local_addrs"`
	RemoteAddrs []Addr   `toml:"remote_addrs"`
	Proposals   []string `toml:"proposals"`
	// PSKFile holds the pre-shared key when either side uses auth = "psk".
	PSKFile  string   `toml:"psk_file"`
	Local    Auth     `toml:"local"`
	Remote   Auth     `toml:"remote"`
	Children []Child  `toml:"child"`
	DPDDelay Duration `toml:"dpd_delay"`
}

// Auth is one side's authentication.
type Auth struct {
	Auth AuthMethod `toml:"auth"`
	ID   string     `toml:"id"`
	// KeyFile is our private key (local side, auth = "pubkey").
	KeyFile string `toml:"key_file"`
	// Pubkeys are the peer's public key files (remote side, auth = "pubkey").
	Pubkeys []string `toml:"pubkeys"`
}

// Child is a CHILD_SA of a Conn.
type Child struct {
	Name         Name              `toml:"name"`
	Mode         ChildMode         `toml:"mode"`
	LocalTS      []TrafficSelector `toml:"local_ts"`
	RemoteTS     []TrafficSelector `toml:"remote_ts"`
	ESPProposals []string          `toml:"esp_proposals"`
	StartAction  StartAction       `toml:"start_action"`
	Inactivity   Duration          `toml:"inactivity"`
	Label        string            `toml:"label"`
	LabelMode    LabelMode         `toml:"label_mode"`
	// LabelEntry names a [[labels.entry]]: obold loads one labeled CHILD_SA
	// per label the entry admits, named ENTRY-l<hash> as `obolctl labels
	// check` shows, with the entry's selectors unless local_ts/remote_ts are
	// given. Name is optional then.
	LabelEntry string `toml:"label_entry"`
}

// Defaults are what an absent key means.
func Defaults() Config {
	return Config{
		Charon:  Charon{VICISocket: "/var/run/charon.vici", CallTimeout: Duration(10e9)},
		Obold:   Obold{ConnPrefix: "obol-", OnStop: OnStopRemove, ReconcileInterval: Duration(5e9)},
		Control: Control{Socket: "/run/obol/obold.sock", Mode: 0o600},
		Log:     Log{Level: "info", Format: "text"},
		OE:      oe.Config{DNS: resolver.Defaults()},
	}
}

// Error is one problem in a config file.
type Error struct {
	File string
	Line int // 0 when the problem has no single line
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Load reads and checks the config at path. Its error lists every problem
// found (errors.Join of *Error), not only the first.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w; give obold --config with a readable TOML file", err)
	}
	return Parse(path, data)
}

// Parse checks a config given as bytes; path is used in messages and for
// resolving relative file names.
func Parse(path string, data []byte) (*Config, error) {
	cfg := Defaults()
	cfg.File = path
	doc, err := Decode(path, data, &cfg)
	if doc == nil {
		return nil, err
	}
	errs := []error{err}
	cfg.resolvePaths()
	for _, p := range cfg.validate() {
		errs = append(errs, doc.Errorf(p.path, "%s", p.msg))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func (c *Config) resolvePaths() {
	dir := filepath.Dir(c.File)
	if d, err := filepath.Abs(dir); err == nil {
		dir = d
	}
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	c.OE.KeyFile = abs(c.OE.KeyFile)
	for _, m := range []*Plugin{&c.Modules.Resolver, &c.Modules.Labels, &c.Modules.XFRM, &c.Modules.TokenAPI} {
		m.Path = abs(m.Path)
	}
	c.Auth.Static.Dir = abs(c.Auth.Static.Dir)
	c.Auth.LeapOfFaith.Store = abs(c.Auth.LeapOfFaith.Store)
	for i := range c.Auth.Plugins {
		c.Auth.Plugins[i].Path = abs(c.Auth.Plugins[i].Path)
	}
	for i := range c.Conns {
		cn := &c.Conns[i]
		cn.PSKFile = abs(cn.PSKFile)
		cn.Local.KeyFile = abs(cn.Local.KeyFile)
		for j, p := range cn.Remote.Pubkeys {
			cn.Remote.Pubkeys[j] = abs(p)
		}
	}
}
