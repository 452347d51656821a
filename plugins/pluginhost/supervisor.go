// Package pluginhost runs obol's external module plugins (go-plugin over
// gRPC) and keeps obold safe from them: every call has a deadline, a plugin
// that crashes, hangs or answers garbage is killed and restarted with
// backoff, and while it is down calls fail at once with a reason, so obold's
// failure policy applies (never clear text under `private`).
package pluginhost

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"github.com/obol-ipsec/obol/plugins"
)

// Spec says how to run one module plugin.
type Spec struct {
	// Kind is the contract the binary serves: "resolver", "labels", "xfrm",
	// "auth", "tokenapi".
	Kind string
	// Path is the plugin binary; Args its arguments.
	Path string
	Args []string
	// Env is added to obold's environment for the plugin.
	Env []string
	// CallTimeout bounds one call (default 3s). A call that takes longer
	// counts as a hang: the plugin is killed and restarted.
	CallTimeout time.Duration
	// StartTimeout bounds the handshake at start (default 5s).
	StartTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait before a restart (defaults
	// 100ms and 10s); it doubles with each failure in a row.
	MinBackoff, MaxBackoff time.Duration
	Log                    *slog.Logger
}

func (s Spec) withDefaults() Spec {
	if s.CallTimeout <= 0 {
		s.CallTimeout = 3 * time.Second
	}
	if s.StartTimeout <= 0 {
		s.StartTimeout = 5 * time.Second
	}
	if s.MinBackoff <= 0 {
		s.MinBackoff = 100 * time.Millisecond
	}
	if s.MaxBackoff < s.MinBackoff {
		s.MaxBackoff = max(10*time.Second, s.MinBackoff)
	}
	if s.Log == nil {
		s.Log = slog.New(slog.DiscardHandler)
	}
	return s
}

// pluginSet is what obold can dispense: one contract per plugin kind.
func pluginSet() goplugin.PluginSet {
	return goplugin.PluginSet{
		plugins.KindResolver: &plugins.ResolverPlugin{},
		plugins.KindLabels:   &plugins.LabelPolicyPlugin{},
		plugins.KindXFRM:     &plugins.XFRMCheckerPlugin{},
		plugins.KindAuth:     &plugins.AuthMethodPlugin{},
		plugins.KindTokenAPI: &plugins.TokenAPIPlugin{},
	}
}

// ErrDown is returned while a plugin is down and its restart is pending.
var ErrDown = errors.New("module plugin is down")

// Supervisor owns one plugin process. Its methods are safe for concurrent
// use.
type Supervisor struct {
	spec Spec
	log  *slog.Logger

	mu       sync.Mutex
	client   *goplugin.Client
	raw      any // the dispensed contract client of the running process
	failures int // in a row, for the backoff
	retryAt  time.Time
	lastErr  error
	restarts int
	closed   bool
	done     chan struct{} // closed by Close: ends watch
}

// Status is what obolctl shows of a plugin.
type Status struct {
	Kind, Path string
	Running    bool
	Restarts   int
	LastError  string
}

// Start runs the plugin once and checks it serves spec.Kind. A binary that
// is missing, speaks another protocol version or does not serve the kind is
// refused here, so obold does not start (or reload) with it.
func Start(ctx context.Context, spec Spec) (*Supervisor, error) {
	spec = spec.withDefaults()
	if _, ok := pluginSet()[spec.Kind]; !ok {
		return nil, fmt.Errorf("pluginhost: unknown module kind %q; want resolver, labels, xfrm, auth or tokenapi", spec.Kind)
	}
	s := &Supervisor{spec: spec, log: spec.Log.With("module", spec.Kind, "plugin", spec.Path)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked(ctx); err != nil {
		return nil, err
	}
	s.done = make(chan struct{})
	go s.watch()
	return s, nil
}

// watchEvery is how often the supervisor looks for a dead plugin, so a
// crashed plugin is back before the next call needs it.
const watchEvery = 100 * time.Millisecond

// watch restarts a plugin that exited, once its backoff has passed, without
// waiting for a call to notice.
func (s *Supervisor) watch() {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if s.client != nil && s.client.Exited() {
			s.faultLocked(errors.New("the plugin process exited"))
		}
		if s.client == nil && !time.Now().Before(s.retryAt) {
			s.restartLocked(context.Background())
		}
		s.mu.Unlock()
	}
}

func (s *Supervisor) startLocked(ctx context.Context) error {
	cmd := exec.CommandContext(context.WithoutCancel(ctx), s.spec.Path, s.spec.Args...)
	cmd.Env = append(os.Environ(), s.spec.Env...)
	c := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  plugins.Handshake,
		Plugins:          pluginSet(),
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		StartTimeout:     s.spec.StartTimeout,
		Logger:           hclogTo(s.log),
		Stderr:           lineLogger{log: s.log},
		SyncStderr:       lineLogger{log: s.log}, // what the plugin writes to os.Stderr after Serve
		Managed:          false,
	})
	rpc, err := c.Client()
	if err != nil {
		c.Kill()
		return fmt.Errorf("pluginhost: start %s plugin %s: %w", s.spec.Kind, s.spec.Path, explainStart(err))
	}
	raw, err := rpc.Dispense(s.spec.Kind)
	if err != nil {
		c.Kill()
		return fmt.Errorf("pluginhost: %s does not serve the %s contract: %w", s.spec.Path, s.spec.Kind, err)
	}
	s.client, s.raw = c, raw
	return nil
}

// explainStart turns go-plugin's start errors into what to do.
func explainStart(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "incompatible API version"):
		return fmt.Errorf("%w; rebuild the plugin against obol's module contracts version %d (plugins.ProtocolVersion)", err, plugins.ProtocolVersion)
	case strings.Contains(msg, "executable file not found"), strings.Contains(msg, "no such file"):
		return fmt.Errorf("%w; check the plugin path in the config", err)
	case strings.Contains(msg, "timeout while waiting for plugin to start"):
		return fmt.Errorf("%w; the binary did not complete go-plugin's handshake: is it an obol module plugin (plugins.Serve)?", err)
	}
	return err
}

// dispense returns the running plugin's contract client, restarting a
// crashed plugin once its backoff has passed.
func (s *Supervisor) dispense(ctx context.Context) (any, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("%s plugin: %w (obold is stopping)", s.spec.Kind, ErrDown)
	}
	if s.client != nil && s.client.Exited() {
		s.faultLocked(errors.New("the plugin process exited"))
	}
	if s.client != nil {
		return s.raw, nil
	}
	if now := time.Now(); now.Before(s.retryAt) {
		return nil, fmt.Errorf("%s plugin: %w after %v; restart in %v", s.spec.Kind, ErrDown, s.lastErr, s.retryAt.Sub(now).Round(time.Millisecond))
	}
	if err := s.restartLocked(ctx); err != nil {
		return nil, fmt.Errorf("%s plugin: %w: %w", s.spec.Kind, ErrDown, err)
	}
	return s.raw, nil
}

func (s *Supervisor) restartLocked(ctx context.Context) error {
	if err := s.startLocked(ctx); err != nil {
		s.failures++
		s.retryAt = time.Now().Add(s.backoffLocked())
		s.lastErr = err
		s.log.Error("module plugin restart failed", "err", err, "retry_in", time.Until(s.retryAt).Round(time.Millisecond))
		return err
	}
	s.restarts++
	s.log.Warn("module plugin restarted", "restarts", s.restarts, "after", s.lastErr)
	return nil
}

// backoffLocked is the wait before the next start: none after a first
// failure (a plugin that crashed once is back at once), then MinBackoff,
// doubling with each failure in a row up to MaxBackoff.
func (s *Supervisor) backoffLocked() time.Duration {
	if s.failures <= 1 {
		return 0
	}
	d := s.spec.MinBackoff
	for i := 2; i < s.failures && d < s.spec.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, s.spec.MaxBackoff)
}

// fault kills the plugin that gave raw (if it is still the current one)
// and schedules its restart.
func (s *Supervisor) fault(raw any, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.raw != raw || s.client == nil {
		return // another call already handled this process
	}
	s.faultLocked(err)
}

func (s *Supervisor) faultLocked(err error) {
	s.client.Kill()
	s.client, s.raw = nil, nil
	s.failures++
	s.lastErr = err
	s.retryAt = time.Now().Add(s.backoffLocked())
	s.log.Error("module plugin failed; killed, restart scheduled", "err", err, "restart_in", time.Until(s.retryAt).Round(time.Millisecond))
}

func (s *Supervisor) ok() {
	s.mu.Lock()
	s.failures = 0
	s.mu.Unlock()
}

func (s *Supervisor) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Status reports the plugin's state.
func (s *Supervisor) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Kind: s.spec.Kind, Path: s.spec.Path, Running: s.client != nil && !s.client.Exited(), Restarts: s.restarts}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	return st
}

// Describe says how the module runs, for obolctl status.
func (s *Supervisor) Describe() string {
	st := s.Status()
	d := fmt.Sprintf("plugin %s (pid %d, restarts %d", st.Path, s.PID(), st.Restarts)
	if !st.Running {
		d += ", down"
	}
	if st.LastError != "" {
		d += ", last error: " + st.LastError
	}
	return d + ")"
}

// PID is the running plugin's process id, 0 when none runs (tests kill it).
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client == nil {
		return 0
	}
	if rc := s.client.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

// Close stops the plugin for good.
func (s *Supervisor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && s.done != nil {
		close(s.done)
	}
	s.closed = true
	if s.client != nil {
		s.client.Kill()
		s.client, s.raw = nil, nil
	}
	return nil
}

// call runs fn against the plugin with the call deadline. A fault of the
// plugin (gone, hung past CallTimeout while the caller still waited,
// garbage) kills it and schedules the restart; the caller gets the error.
func call[C, R any](ctx context.Context, s *Supervisor, fn func(context.Context, C) (R, error)) (R, error) {
	var zero R
	raw, err := s.dispense(ctx)
	if err != nil {
		return zero, err
	}
	c, ok := raw.(C)
	if !ok {
		return zero, fmt.Errorf("pluginhost: %s plugin dispensed %T", s.spec.Kind, raw)
	}
	cctx, cancel := context.WithTimeout(ctx, s.spec.CallTimeout)
	defer cancel()
	r, err := fn(cctx, c)
	if err != nil {
		// A deadline the caller set itself is the caller's, not a hang.
		if plugins.IsPluginFault(err) && ctx.Err() == nil {
			s.fault(raw, err)
		}
		return r, err
	}
	s.ok()
	return r, nil
}

// lineLogger logs a plugin's stderr line by line: go-plugin's own JSON log
// lines at their level, anything else (a panic's trace) as a warning.
type lineLogger struct{ log *slog.Logger }

func (l lineLogger) Write(p []byte) (int, error) {
	sc := bufio.NewScanner(bytes.NewReader(p))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var j map[string]any
		if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &j) == nil && j["@message"] != nil {
			lvl := slog.LevelInfo
			level, _ := j["@level"].(string)
			msg, _ := j["@message"].(string)
			// The line's other fields (err, ...) go along as attributes.
			var attrs []any
			for k, v := range j {
				if !strings.HasPrefix(k, "@") {
					attrs = append(attrs, k, v)
				}
			}
			switch level {
			case "trace", "debug":
				lvl = slog.LevelDebug
			case "warn":
				lvl = slog.LevelWarn
			case "error":
				lvl = slog.LevelError
			}
			l.log.Log(context.Background(), lvl, "module plugin: "+msg, attrs...)
			continue
		}
		l.log.Warn("module plugin stderr", "line", line)
	}
	return len(p), nil
}

// hclogTo gives go-plugin an hclog logger that writes into slog.
func hclogTo(log *slog.Logger) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "go-plugin", Level: hclog.Info, Output: slogWriter{log: log}, DisableTime: true})
}

type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	if line != "" {
		w.log.Info(line)
	}
	return len(p), nil
}

var _ io.Writer = slogWriter{}
