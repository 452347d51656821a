// Package config reads obold's TOML configuration strictly: unknown keys,
// wrong types and bad values are all refused, each reported as
// "FILE:LINE: what is wrong; what to write instead".
package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
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
}

// Defaults are what an absent key means.
func Defaults() Config {
	return Config{
		Charon:  Charon{VICISocket: "/var/run/charon.vici", CallTimeout: Duration(10e9)},
		Obold:   Obold{ConnPrefix: "obol-", OnStop: OnStopRemove, ReconcileInterval: Duration(5e9)},
		Control: Control{Socket: "/run/obol/obold.sock", Mode: 0o600},
		Log:     Log{Level: "info", Format: "text"},
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
	doc := string(data)
	md, err := toml.Decode(doc, &cfg)
	if err != nil {
		return nil, decodeError(path, err)
	}
	cfg.resolvePaths()
	kl := scanKeys(doc)
	var errs []error
	seen := map[string]int{}
	// Every key is checked against the schema here, case-sensitively: the
	// decoder matches field names case-insensitively, so Undecoded alone
	// would let "Conn_Prefix" through.
	for _, k := range md.Keys() {
		parent := strings.Join(k[:len(k)-1], ".")
		plain := strings.Join(k, ".")
		n := seen[plain]
		seen[plain]++
		if slices.Contains(known[parent], k[len(k)-1]) {
			continue
		}
		if _, isParentKnown := known[parent]; !isParentKnown && parent != "" {
			continue // reported at the unknown parent already
		}
		line := 0
		if lines := kl.plain[plain]; n < len(lines) {
			line = lines[n]
		}
		errs = append(errs, &Error{File: path, Line: line, Msg: unknownKeyMsg(k)})
	}
	for _, v := range cfg.validate() {
		errs = append(errs, &Error{File: path, Line: kl.line(v.path), Msg: v.msg})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return &cfg, nil
}

// decodeError turns the decoder's error into FILE:LINE form.
func decodeError(path string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.LastKey != "" && !strings.Contains(msg, pe.LastKey) {
			msg = fmt.Sprintf("%s: %s", pe.LastKey, msg)
		}
		if strings.Contains(msg, "incompatible types") {
			msg += "; check the value's type (strings are quoted, lists are [ ... ], durations are strings like \"10s\")"
		}
		return &Error{File: path, Line: pe.Position.Line, Msg: msg}
	}
	return &Error{File: path, Msg: err.Error()}
}

// known lists the keys of each table, for "did you mean" hints.
var known = map[string][]string{
	"":            {"charon", "obold", "control", "log", "conn"},
	"charon":      {"vici_socket", "call_timeout"},
	"obold":       {"conn_prefix", "on_stop", "reconcile_interval"},
	"control":     {"socket", "mode", "group"},
	"log":         {"level", "format"},
	"conn":        {"name", "version", "local_addrs", "remote_addrs", "proposals", "psk_file", "local", "remote", "child", "dpd_delay"},
	"conn.local":  {"auth", "id", "key_file", "pubkeys"},
	"conn.remote": {"auth", "id", "key_file", "pubkeys"},
	"conn.child":  {"name", "mode", "local_ts", "remote_ts", "esp_proposals", "start_action", "inactivity", "label", "label_mode"},
}

func unknownKeyMsg(k toml.Key) string {
	parent := strings.Join(k[:len(k)-1], ".")
	name := k[len(k)-1]
	keys, ok := known[parent]
	if !ok {
		return fmt.Sprintf("unknown key %q; remove it (obold reads no keys under [%s])", strings.Join(k, "."), parent)
	}
	where := "at the top level"
	if parent != "" {
		where = "in [" + parent + "]"
	}
	if s := closest(name, keys); s != "" {
		return fmt.Sprintf("unknown key %q %s; did you mean %q?", name, where, s)
	}
	return fmt.Sprintf("unknown key %q %s; the keys there are %s", name, where, quoteList(keys))
}

// closest returns the known key within edit distance 2 of s, if any.
func closest(s string, keys []string) string {
	best, bestD := "", 3
	for _, k := range keys {
		if d := editDistance(s, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := 1
			if a[i-1] == b[j-1] {
				c = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+c)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
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
	for i := range c.Conns {
		cn := &c.Conns[i]
		cn.PSKFile = abs(cn.PSKFile)
		cn.Local.KeyFile = abs(cn.Local.KeyFile)
		for j, p := range cn.Remote.Pubkeys {
			cn.Remote.Pubkeys[j] = abs(p)
		}
	}
}
