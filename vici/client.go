package vici

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// DefaultMaxControlCalls is Options.MaxControlCalls when not set.
const DefaultMaxControlCalls = 4

// Options tune a Client or an EventStream. Zero values take the defaults.
type Options struct {
	// Logger receives the client's own logs; nil means slog.Default().
	Logger *slog.Logger
	// CallTimeout bounds commands whose ctx has no deadline (govici needs
	// one, deps.md); default 10 s. It applies to initiate and terminate too:
	// give those a ctx with a longer deadline when peers may be slow.
	CallTimeout time.Duration
	// MaxControlCalls bounds concurrent initiate/terminate calls, which each
	// hold one of charon's worker threads until done (charon 5.9.8 has
	// about 7 idle of 16 by default, and IKE itself needs them); default 4.
	MaxControlCalls int
	// EventBuffer is the capacity of EventStream.C; default 256.
	EventBuffer int
	// SlowConsumer is how long WatchEvents waits for room in a full
	// EventStream.C before it drops events (then sends EventLost and an
	// EventConnected with fresh SAs); default 5 s.
	SlowConsumer time.Duration
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 10 * time.Second
	}
	if o.MaxControlCalls <= 0 {
		o.MaxControlCalls = DefaultMaxControlCalls
	}
	if o.EventBuffer <= 0 {
		o.EventBuffer = 256
	}
	if o.SlowConsumer <= 0 {
		o.SlowConsumer = 5 * time.Second
	}
	return o
}

// Client is a typed VICI client. It redials charon by itself when the
// socket goes away, so one Client lives as long as obold. It is safe for
// concurrent use: quick commands share one session (serialised); initiate
// and terminate each get their own session so a slow peer blocks nobody.
type Client struct {
	path string
	opts Options
	log  *slog.Logger

	// turn serialises use of the shared session (a 1-slot semaphore, so
	// that waiting for it honours ctx).
	turn chan struct{}
	ctl  chan struct{} // semaphore for control sessions

	mu     sync.Mutex // guards sess and ctlSet
	sess   *session
	ctlSet map[*session]struct{}
	closed atomic.Bool
}

// NewClient makes a client for charon's VICI socket at path without
// connecting: the first call dials. obold uses it so it can start before
// charon does.
func NewClient(path string, opts Options) *Client {
	opts = opts.withDefaults()
	return &Client{
		path:   path,
		opts:   opts,
		log:    opts.Logger,
		turn:   make(chan struct{}, 1),
		ctl:    make(chan struct{}, opts.MaxControlCalls),
		ctlSet: make(map[*session]struct{}),
	}
}

// Dial connects to charon's VICI socket at path (unix socket path, no "unix://").
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	c := NewClient(path, opts)
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	s, err := dial(ctx, path, streamWindow)
	if err != nil {
		return nil, c.unavailable("dial", err)
	}
	c.sess = s
	return c, nil
}

// Close ends the client's sessions; calls in flight fail with ErrClosed.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess != nil {
		c.sess.close()
		c.sess = nil
	}
	for s := range c.ctlSet {
		s.close()
	}
	return nil
}

func (c *Client) deadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.opts.CallTimeout)
}

func (c *Client) unavailable(cmd string, err error) error {
	return fmt.Errorf("vici: %s: %w: is charon running, with the vici plugin listening on %s? (%w)", cmd, ErrUnavailable, c.path, err)
}

// failed explains a connection-level failure of cmd.
func (c *Client) failed(ctx context.Context, cmd string, err error) error {
	switch {
	case c.closed.Load():
		return fmt.Errorf("vici: %s: %w", cmd, ErrClosed)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("vici: %s: no answer from charon at %s before the deadline (%w): charon may be busy or hung; allow more time or check charon's log", cmd, c.path, ctx.Err())
	case ctx.Err() != nil:
		return fmt.Errorf("vici: %s: %w", cmd, ctx.Err())
	}
	return c.unavailable(cmd, err)
}

// retry says when a command that failed on the connection is sent again.
type retry int

const (
	// retryUnsent: only if the request never reached the socket (commands with effects).
	retryUnsent retry = iota
	// retryOnce: once more on a fresh session (reads, and loads, which replace).
	retryOnce
)

// exchange runs f on the shared session. A dead session (charon restarted)
// is replaced before use; a connection failure drops it, so the next call
// redials, and f is retried once on a fresh session as r allows.
func (c *Client) exchange(ctx context.Context, cmd string, r retry, f func(context.Context, *session) error) error {
	if c.closed.Load() {
		return fmt.Errorf("vici: %s: %w", cmd, ErrClosed)
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	select {
	case c.turn <- struct{}{}:
	case <-ctx.Done():
		return c.failed(ctx, cmd, ctx.Err())
	}
	defer func() { <-c.turn }()

	for attempt := 0; ; attempt++ {
		s, err := c.session(ctx)
		if err != nil {
			return c.failed(ctx, cmd, err)
		}
		err = f(ctx, s)
		var ce *connError
		if !errors.As(err, &ce) {
			return err
		}
		c.drop(s, cmd, err)
		if attempt == 0 && ctx.Err() == nil && !c.closed.Load() && (r == retryOnce || !ce.sent) {
			continue
		}
		return c.failed(ctx, cmd, err)
	}
}

// session returns the shared session, redialing if there is none or its
// socket has died. Callers hold c.turn.
func (c *Client) session(ctx context.Context) (*session, error) {
	c.mu.Lock()
	s := c.sess
	c.mu.Unlock()
	if s != nil {
		err := s.fc.dead()
		if err == nil {
			return s, nil
		}
		c.drop(s, "(none yet: the socket had closed)", err)
	}
	if c.closed.Load() {
		return nil, ErrClosed
	}
	s, err := dial(ctx, c.path, streamWindow)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		s.close()
		return nil, ErrClosed
	}
	c.sess = s
	c.log.Debug("vici: connected to charon", "path", c.path)
	return s, nil
}

// drop forgets s so that the next call redials.
func (c *Client) drop(s *session, cmd string, why error) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
	s.close()
	if !c.closed.Load() {
		c.log.Info("vici: dropping the session to charon; the next call redials", "path", c.path, "command", cmd, "err", why)
	}
}

// command runs a plain command on the shared session.
func (c *Client) command(ctx context.Context, cmd, target string, r retry, in *govici.Message) (*govici.Message, error) {
	var out *govici.Message
	err := c.exchange(ctx, cmd, r, func(ctx context.Context, s *session) error {
		m, err := s.call(ctx, cmd, target, in)
		out = m
		return err
	})
	return out, err
}

// Version asks charon for its version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	m, err := c.command(ctx, "version", "", retryOnce, nil)
	if err != nil {
		return Version{}, err
	}
	return decodeVersion(m)
}

// Stats asks charon for its uptime, SA counts, workers and plugins.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	m, err := c.command(ctx, "stats", "", retryOnce, nil)
	if err != nil {
		return Stats{}, err
	}
	return decodeStats(m)
}

// LoadConn loads or replaces conn.
func (c *Client) LoadConn(ctx context.Context, conn Conn) error {
	msg, err := marshalConn(conn)
	if err != nil {
		return err
	}
	// Loading replaces, so sending it twice is harmless.
	_, err = c.command(ctx, "load-conn", strconv.Quote(conn.Name), retryOnce, msg)
	return err
}

// UnloadConn unloads the conn called name.
func (c *Client) UnloadConn(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("vici: unload-conn: no conn name given")
	}
	msg := govici.NewMessage()
	_ = msg.Set("name", name)
	_, err := c.command(ctx, "unload-conn", strconv.Quote(name), retryUnsent, msg)
	return err
}

// ConnNames lists the names of the conns loaded over VICI (get-conns).
func (c *Client) ConnNames(ctx context.Context) ([]string, error) {
	m, err := c.command(ctx, "get-conns", "", retryOnce, nil)
	if err != nil {
		return nil, err
	}
	f := &fields{where: "get-conns", m: m}
	names := f.list("conns")
	return names, f.err
}

// ListConns lists loaded conns (from any backend); name "" lists all.
func (c *Client) ListConns(ctx context.Context, name string) ([]ConnInfo, error) {
	in := govici.NewMessage()
	if name != "" {
		_ = in.Set("ike", name)
	}
	msgs, err := c.list(ctx, "list-conns", "list-conn", in)
	if err != nil {
		return nil, err
	}
	var out []ConnInfo
	for _, m := range msgs {
		cs, err := decodeListConn(m)
		if err != nil {
			return nil, err
		}
		out = append(out, cs...)
	}
	return out, nil
}

// ListCerts lists the certificates and raw public keys in charon's
// credential sets that match filter (list-certs). charon 5.9.8 lists the
// ones loaded over VICI and the peer certificates it cached after
// verifying them.
func (c *Client) ListCerts(ctx context.Context, filter CertFilter) ([]Cert, error) {
	in := govici.NewMessage()
	for k, v := range map[string]string{"type": filter.Type, "flag": filter.Flag, "subject": filter.Subject} {
		if v != "" {
			_ = in.Set(k, v)
		}
	}
	msgs, err := c.list(ctx, "list-certs", "list-cert", in)
	if err != nil {
		return nil, err
	}
	out := make([]Cert, 0, len(msgs))
	for _, m := range msgs {
		cert, err := decodeListCert(m)
		if err != nil {
			return nil, err
		}
		out = append(out, cert)
	}
	return out, nil
}

// ListSAs lists IKE_SAs (with their CHILD_SAs) matching sel.
func (c *Client) ListSAs(ctx context.Context, sel SASelector) ([]IKESA, error) {
	msgs, err := c.list(ctx, "list-sas", "list-sa", selectorMessage(sel))
	if err != nil {
		return nil, err
	}
	return decodeSAs(msgs)
}

func decodeSAs(msgs []*govici.Message) ([]IKESA, error) {
	out := []IKESA{}
	for _, m := range msgs {
		sas, err := decodeListSA(m)
		if err != nil {
			return nil, err
		}
		out = append(out, sas...)
	}
	return out, nil
}

// list collects a streamed listing into a slice first and decodes later,
// so govici's stream buffer is drained as fast as possible (deps.md).
func (c *Client) list(ctx context.Context, cmd, event string, in *govici.Message) ([]*govici.Message, error) {
	var msgs []*govici.Message
	err := c.exchange(ctx, cmd, retryOnce, func(ctx context.Context, s *session) error {
		msgs = msgs[:0]
		_, err := s.stream(ctx, cmd, "", event, in, func(m *govici.Message) { msgs = append(msgs, m) })
		return err
	})
	return msgs, err
}

func selectorMessage(sel SASelector) *govici.Message {
	m := govici.NewMessage()
	if sel.IKE != "" {
		_ = m.Set("ike", sel.IKE)
	}
	if sel.IKEID != 0 {
		_ = m.Set("ike-id", strconv.FormatUint(uint64(sel.IKEID), 10))
	}
	if sel.Child != "" {
		_ = m.Set("child", sel.Child)
	}
	if sel.ChildID != 0 {
		_ = m.Set("child-id", strconv.FormatUint(uint64(sel.ChildID), 10))
	}
	return m
}

func (sel SASelector) String() string {
	var parts []string
	if sel.IKE != "" {
		parts = append(parts, "ike "+strconv.Quote(sel.IKE))
	}
	if sel.IKEID != 0 {
		parts = append(parts, "ike-id "+strconv.FormatUint(uint64(sel.IKEID), 10))
	}
	if sel.Child != "" {
		parts = append(parts, "child "+strconv.Quote(sel.Child))
	}
	if sel.ChildID != 0 {
		parts = append(parts, "child-id "+strconv.FormatUint(uint64(sel.ChildID), 10))
	}
	if len(parts) == 0 {
		return "(everything)"
	}
	s := parts[0]
	for _, p := range parts[1:] {
		s += ", " + p
	}
	return s
}

func (sel SASelector) empty() bool { return sel == SASelector{} }

// Initiate starts the CHILD_SA child (of conn ike, may be "") and waits
// until it is up or ctx ends. child "" initiates the IKE_SA of conn ike
// alone. On failure the error (a *CommandError) carries charon's reason and
// the last relevant lines of its log for this initiate.
func (c *Client) Initiate(ctx context.Context, ike, child string) error {
	var target string
	in := govici.NewMessage()
	switch {
	case child != "" && ike != "":
		target = fmt.Sprintf("child %q of conn %q", child, ike)
	case child != "":
		target = fmt.Sprintf("child %q", child)
	case ike != "":
		target = fmt.Sprintf("conn %q", ike)
	default:
		return errors.New("vici: initiate: neither a conn nor a child named: name at least one")
	}
	if child != "" {
		_ = in.Set("child", child)
	}
	if ike != "" {
		_ = in.Set("ike", ike)
	}
	_, err := c.control(ctx, "initiate", target, in)
	return err
}

// Terminate closes the SAs matching sel and waits until charon is done.
func (c *Client) Terminate(ctx context.Context, sel SASelector) error {
	return c.terminate(ctx, sel, false)
}

// TerminateForce closes the IKE_SAs matching sel without waiting for the
// peer to answer the DELETE (for dead peers). Children are closed normally.
func (c *Client) TerminateForce(ctx context.Context, sel SASelector) error {
	return c.terminate(ctx, sel, true)
}

func (c *Client) terminate(ctx context.Context, sel SASelector, force bool) error {
	if sel.empty() {
		return errors.New("vici: terminate: empty selector: name the conn, child or SA ids to close")
	}
	in := selectorMessage(sel)
	if force {
		_ = in.Set("force", "yes")
	}
	_, err := c.control(ctx, "terminate", sel.String(), in)
	return err
}

// controlLogLines is how many control-log lines a failed initiate/terminate reports.
const controlLogLines = 5

// control runs initiate or terminate on a session of its own, passing the
// remaining time as charon's timeout (a little less, so charon's own
// answer, with its reason, arrives before our deadline) and collecting
// control-log lines for the error.
func (c *Client) control(ctx context.Context, cmd, target string, in *govici.Message) (*govici.Message, error) {
	if c.closed.Load() {
		return nil, fmt.Errorf("vici: %s: %w", cmd, ErrClosed)
	}
	ctx, cancel := c.deadline(ctx)
	defer cancel()
	select {
	case c.ctl <- struct{}{}:
	case <-ctx.Done():
		return nil, c.failed(ctx, cmd, ctx.Err())
	}
	defer func() { <-c.ctl }()

	dl, _ := ctx.Deadline()
	left := time.Until(dl)
	ms := (left - min(left/10, 500*time.Millisecond)).Milliseconds()
	_ = in.Set("timeout", strconv.FormatInt(max(ms, 1), 10)) // 0 would mean forever
	_ = in.Set("loglevel", "1")

	s, err := dial(ctx, c.path, streamWindow)
	if err != nil {
		return nil, c.failed(ctx, cmd, err)
	}
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		s.close()
		return nil, fmt.Errorf("vici: %s: %w", cmd, ErrClosed)
	}
	c.ctlSet[s] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.ctlSet, s)
		c.mu.Unlock()
		s.close()
	}()

	var lines []string
	m, err := s.stream(ctx, cmd, target, "control-log", in, func(m *govici.Message) {
		l, err := decodeLog(m)
		if err != nil || l.Level > 1 || l.Group == "ENC" || l.Group == "NET" {
			return // packet noise says nothing about why
		}
		c.log.Debug("vici: charon", "command", cmd, "group", l.Group, "msg", l.Message)
		if len(lines) == controlLogLines {
			lines = append(lines[:0], lines[1:]...)
		}
		lines = append(lines, l.Message)
	})
	var ce *CommandError
	if errors.As(err, &ce) {
		ce.Log = lines
		return m, ce
	}
	if isConnError(err) {
		return nil, c.failed(ctx, cmd, err)
	}
	return m, err
}

// Rekey rekeys the SAs matching sel; reauth asks for an IKE
// reauthentication. charon only queues the rekeying: watch for ike-rekey
// or child-rekey events to see it done.
func (c *Client) Rekey(ctx context.Context, sel SASelector, reauth bool) error {
	if sel.empty() {
		return errors.New("vici: rekey: empty selector: name the conn, child or SA ids to rekey")
	}
	in := selectorMessage(sel)
	if reauth {
		_ = in.Set("reauth", "yes")
	}
	_, err := c.command(ctx, "rekey", sel.String(), retryUnsent, in)
	return err
}

// LoadShared loads a shared secret; an empty Type means "ike".
func (c *Client) LoadShared(ctx context.Context, s Shared) error {
	typ := s.Type
	if typ == "" {
		typ = "ike"
	}
	if len(s.Data) > maxValue {
		return fmt.Errorf("vici: load-shared %q: secret of %d bytes is longer than the %d VICI allows", s.ID, len(s.Data), maxValue)
	}
	in := govici.NewMessage()
	if s.ID != "" {
		_ = in.Set("id", s.ID)
	}
	_ = in.Set("type", typ)
	_ = in.Set("data", string(s.Data))
	if len(s.Owners) > 0 {
		_ = in.Set("owners", s.Owners)
	}
	_, err := c.command(ctx, "load-shared", strconv.Quote(s.ID), retryOnce, in)
	return err
}

// UnloadShared unloads the shared secret with the given id.
func (c *Client) UnloadShared(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("vici: unload-shared: no id given")
	}
	in := govici.NewMessage()
	_ = in.Set("id", id)
	_, err := c.command(ctx, "unload-shared", strconv.Quote(id), retryUnsent, in)
	return err
}

// LoadKey loads a private key and returns charon's key id for it (the
// hex SHA-1 of the public key); an empty Type means "any".
func (c *Client) LoadKey(ctx context.Context, k Key) (string, error) {
	typ := k.Type
	if typ == "" {
		typ = "any"
	}
	if len(k.Data) > maxValue {
		return "", fmt.Errorf("vici: load-key: key of %d bytes is longer than the %d VICI allows", len(k.Data), maxValue)
	}
	in := govici.NewMessage()
	_ = in.Set("type", typ)
	_ = in.Set("data", string(k.Data))
	m, err := c.command(ctx, "load-key", typ+" key", retryOnce, in)
	if err != nil {
		return "", err
	}
	f := &fields{where: "load-key", m: m}
	id := f.str("id")
	if f.err == nil && id == "" {
		f.fail("id", "missing from charon's answer")
	}
	return id, f.err
}

// UnloadKey unloads the private key with charon's key id.
func (c *Client) UnloadKey(ctx context.Context, id string) error {
	if id == "" {
		return errors.New("vici: unload-key: no key id given")
	}
	in := govici.NewMessage()
	_ = in.Set("id", id)
	_, err := c.command(ctx, "unload-key", strconv.Quote(id), retryUnsent, in)
	return err
}
