package resolver

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Exchanger sends one DNS query and returns the answer. The resolver core
// uses nothing else to reach DNS, so tests give it a fake
// (resolver/resolvertest) and production the UDP/TCP Client.
//
// Exchange must return when ctx ends, with an error wrapping ctx.Err(). It
// must not modify q, and may return an answer with any rcode (SERVFAIL
// included) as a nil-error result: the resolver interprets rcodes.
type Exchanger interface {
	Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
}

// DialFunc opens a connection, like net.Dialer.DialContext. The lab passes
// one that opens sockets inside a network namespace.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Client is the real Exchanger: UDP first, TCP when the answer is
// truncated, to one server. Answers whose ID or question do not match the
// query are dropped (and counted), not taken. Safe for concurrent use.
type Client struct {
	// Server is the resolver's address.
	Server netip.AddrPort
	// Retransmit is how long to wait for a UDP answer before sending the
	// query again; each wait doubles. 0 means 1s.
	Retransmit time.Duration
	// UDPSize is the largest UDP answer accepted (and advertised by the
	// resolver's EDNS0 option). 0 means 1232.
	UDPSize uint16
	// Dial opens the sockets; nil uses net.Dialer.
	Dial DialFunc

	stats clientStats
}

type clientStats struct {
	udp, tcp, retransmits, mismatched atomic.Uint64
}

// ClientStats counts what a Client did.
type ClientStats struct {
	UDPQueries  uint64 // queries sent over UDP (first attempts)
	TCPQueries  uint64 // queries sent over TCP (after a truncated UDP answer)
	Retransmits uint64 // UDP queries sent again after a silence
	Mismatched  uint64 // answers dropped because their ID or question did not match
}

// Stats returns the client's counters so far.
func (c *Client) Stats() ClientStats {
	return ClientStats{
		UDPQueries:  c.stats.udp.Load(),
		TCPQueries:  c.stats.tcp.Load(),
		Retransmits: c.stats.retransmits.Load(),
		Mismatched:  c.stats.mismatched.Load(),
	}
}

// DefaultUDPSize is the EDNS0 buffer size obol advertises: the DNS Flag
// Day 2020 value, which avoids IP fragmentation.
const DefaultUDPSize = 1232

// Exchange implements Exchanger.
func (c *Client) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if len(q.Question) != 1 {
		return nil, errors.New("resolver client: a query needs exactly one question")
	}
	wire, err := q.Pack()
	if err != nil {
		return nil, fmt.Errorf("packing the query: %w", err)
	}
	r, err := c.udp(ctx, q, wire)
	if err != nil {
		return nil, err
	}
	if !r.Truncated {
		return r, nil
	}
	return c.tcp(ctx, q, wire)
}

func (c *Client) dial(ctx context.Context, network string) (net.Conn, error) {
	addr := c.Server.String()
	var conn net.Conn
	var err error
	if c.Dial != nil {
		conn, err = c.Dial(ctx, network, addr)
	} else {
		var d net.Dialer
		conn, err = d.DialContext(ctx, network, addr)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to %s over %s: %w", addr, network, ctx.Err())
		}
		return nil, fmt.Errorf("connecting to %s over %s: %w; check [resolver] server", addr, network, err)
	}
	return conn, nil
}

// watch makes conn's pending reads and writes fail when ctx ends.
func watch(ctx context.Context, conn net.Conn) (stop func() bool) {
	return context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
}

// ioError turns a socket error into one that says what happened; a
// deadline caused by ctx wraps ctx.Err().
func (c *Client) ioError(ctx context.Context, network, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("no answer from %s over %s: %w", c.Server, network, ctx.Err())
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s %s over %s: nothing listens there (connection refused); check that the validating resolver runs and [resolver] server: %w", what, c.Server, network, err)
	}
	return fmt.Errorf("%s %s over %s: %w", what, c.Server, network, err)
}

func (c *Client) udp(ctx context.Context, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	conn, err := c.dial(ctx, "udp")
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer watch(ctx, conn)()
	size := int(c.UDPSize)
	if size == 0 {
		size = DefaultUDPSize
	}
	buf := make([]byte, max(size, 512))
	wait := c.Retransmit
	if wait <= 0 {
		wait = time.Second
	}
	c.stats.udp.Add(1)
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			c.stats.retransmits.Add(1)
		}
		if _, err := conn.Write(wire); err != nil {
			return nil, c.ioError(ctx, "udp", "sending to", err)
		}
		deadline := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		if err := conn.SetReadDeadline(deadline); err != nil {
			return nil, c.ioError(ctx, "udp", "reading from", err)
		}
		for {
			n, err := conn.Read(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
					break // silence: send again
				}
				return nil, c.ioError(ctx, "udp", "reading from", err)
			}
			r := new(dns.Msg)
			if err := r.Unpack(buf[:n]); err != nil {
				// A truncated message may fail to unpack past its header:
				// fall back to TCP rather than give up.
				if n >= 12 && buf[2]&0x02 != 0 && binary.BigEndian.Uint16(buf[:2]) == q.Id {
					return &dns.Msg{MsgHdr: dns.MsgHdr{Id: q.Id, Truncated: true}}, nil
				}
				c.stats.mismatched.Add(1)
				continue
			}
			if !matches(q, r) {
				c.stats.mismatched.Add(1)
				continue
			}
			return r, nil
		}
		wait *= 2
	}
}

func (c *Client) tcp(ctx context.Context, q *dns.Msg, wire []byte) (*dns.Msg, error) {
	conn, err := c.dial(ctx, "tcp")
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	defer watch(ctx, conn)()
	c.stats.tcp.Add(1)
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	framed := make([]byte, 2+len(wire))
	binary.BigEndian.PutUint16(framed, uint16(len(wire)))
	copy(framed[2:], wire)
	if _, err := conn.Write(framed); err != nil {
		return nil, c.ioError(ctx, "tcp", "sending to", err)
	}
	var lenBuf [2]byte
	if _, err := io.ReadFull(conn, lenBuf[:]); err != nil {
		return nil, c.ioError(ctx, "tcp", "reading from", err)
	}
	buf := make([]byte, binary.BigEndian.Uint16(lenBuf[:]))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return nil, c.ioError(ctx, "tcp", "reading from", err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf); err != nil {
		return nil, fmt.Errorf("answer from %s over tcp does not parse: %w", c.Server, err)
	}
	if !matches(q, r) {
		c.stats.mismatched.Add(1)
		return nil, fmt.Errorf("answer from %s over tcp does not match the query (ID or question)", c.Server)
	}
	return r, nil
}

// matches says whether r answers q: same ID, a response, same question.
// An error answer (FORMERR, REFUSED, ...) may come without the question.
func matches(q, r *dns.Msg) bool {
	if r.Id != q.Id || !r.Response {
		return false
	}
	if len(r.Question) == 0 && r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
		return true
	}
	if len(r.Question) != 1 {
		return false
	}
	a, b := q.Question[0], r.Question[0]
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}
