package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/obol-ipsec/obol/internal/peercred"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handler serves one method. params is the raw "params" value (may be nil).
type Handler func(ctx context.Context, params json.RawMessage) (any, error)

// Server answers control requests.
type Server struct {
	handlers map[string]Handler
	// allowGID may connect besides uid 0; -1 for root only.
	allowGID int
	log      *slog.Logger
	wg       sync.WaitGroup
}

// NewServer makes a server; allowGID < 0 means root only.
func NewServer(handlers map[string]Handler, allowGID int, log *slog.Logger) *Server {
	return &Server{handlers: handlers, allowGID: allowGID, log: log}
}

// Listen opens the control socket at path with the given mode and group.
// A stale socket left by a crashed obold is replaced; a live one is an error.
func Listen(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w; create the directory or change [control] socket", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: another obold is running; stop it or change [control] socket", path)
	}
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	if gid >= 0 {
		if err := os.Chown(path, 0, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control socket %s: chown to group %d: %w", path, gid, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket %s: chmod %o: %w", path, mode, err)
	}
	return ln, nil
}

// Serve answers connections on ln until ctx ends, then waits for the
// requests in flight.
func (s *Server) Serve(ctx context.Context, ln *net.UnixListener) error {
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	defer s.wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("control: accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(ctx, c)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	defer c.Close()
	cred, err := peercred.Of(c)
	if err != nil || !s.allowed(cred) {
		s.log.Warn("control: refused a client", "uid", credUID(cred), "err", err)
		writeResponse(c, Response{V: Version, Error: &Error{CodeBadRequest, "permission denied: the control socket is for root (or the [control] group)"}})
		return
	}
	r := bufio.NewReaderSize(c, 64<<10)
	for {
		line, err := readLine(r)
		if err != nil {
			if !errors.Is(err, errEOF) {
				writeResponse(c, Response{V: Version, Error: &Error{CodeBadRequest, err.Error()}})
			}
			return
		}
		resp := s.handle(ctx, line)
		if err := writeResponse(c, resp); err != nil {
			return
		}
	}
}

func (s *Server) handle(ctx context.Context, line []byte) Response {
	req, cerr := DecodeRequest(line)
	if cerr != nil {
		return Response{V: Version, Error: cerr}
	}
	h, ok := s.handlers[req.Method]
	if !ok {
		return Response{V: Version, Error: &Error{CodeUnknownMethod, fmt.Sprintf("unknown method %q; this obold knows %v", req.Method, s.methods())}}
	}
	res, err := h(ctx, req.Params)
	if err != nil {
		return Response{V: Version, Error: AsError(err)}
	}
	b, err := json.Marshal(res)
	if err != nil {
		return Response{V: Version, Error: &Error{CodeFailed, fmt.Sprintf("encode result of %s: %v", req.Method, err)}}
	}
	return Response{V: Version, Result: b}
}

func (s *Server) methods() []string {
	var m []string
	for k := range s.handlers {
		m = append(m, k)
	}
	slices.Sort(m)
	return m
}

func (s *Server) allowed(cred *unix.Ucred) bool {
	if cred == nil {
		return false
	}
	if cred.Uid == 0 {
		return true
	}
	return s.allowGID >= 0 && peercred.InGroup(cred, uint32(s.allowGID))
}

func credUID(c *unix.Ucred) int {
	if c == nil {
		return -1
	}
	return int(c.Uid)
}

var errEOF = errors.New("eof")

// readLine reads one newline-terminated line of at most MaxLine bytes.
func readLine(r *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		chunk, err := r.ReadSlice('\n')
		buf = append(buf, chunk...)
		if len(buf) > MaxLine {
			return nil, fmt.Errorf("request longer than %d bytes; send smaller requests", MaxLine)
		}
		if err == nil {
			return buf[:len(buf)-1], nil
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if len(buf) == 0 {
			return nil, errEOF
		}
		return nil, fmt.Errorf("request not terminated by a newline: %w", err)
	}
}

func writeResponse(c net.Conn, r Response) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Write(append(b, '\n'))
	return err
}
