//go:build linux

package xfrm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// XFRMNLGRP_* multicast groups.
const (
	groupAcquire = 1
	groupExpire  = 2
)

// ListenConfig configures a Listener. The zero value works.
type ListenConfig struct {
	// Queue is how many ACQUIREs wait for the reader (default 256). When it
	// is full, new ones are dropped and counted: the kernel side never waits.
	Queue int
	// Owner, when set, keeps only ACQUIREs raised by obold's own policies
	// (others, e.g. charon's traps with the kernel datapath, are counted as
	// Foreign); recovered ones are told by their template's reqid.
	Owner *Owner
	// RcvBuf is the socket receive buffer in bytes (default 4 MiB): the
	// burst the kernel can queue before it drops (ENOBUFS).
	RcvBuf int
	// Expiries also delivers obold's policies that the kernel deleted on
	// their hard lifetime (XFRM_MSG_POLEXPIRE) on Expired().
	Expiries bool
	// Log receives overruns, drops and undecodable messages (nil: slog.Default()).
	Log *slog.Logger
}

// ListenerStats counts what a Listener saw.
type ListenerStats struct {
	Received     uint64 // ACQUIREs decoded
	Delivered    uint64 // put on the channel
	Dropped      uint64 // lost because the queue was full
	Foreign      uint64 // raised by policies that are not obold's (with Owner)
	Overruns     uint64 // ENOBUFS: the kernel dropped messages for us
	Recovered    uint64 // rebuilt from larval states after an overrun
	DecodeErrors uint64
	Expired      uint64 // POLEXPIREs delivered
}

// Listener hears the kernel's ACQUIREs (XFRMNLGRP_ACQUIRE) in the network
// namespace of the thread that called Listen, decodes them and queues them
// on a bounded channel.
//
// When the socket overruns (ENOBUFS), ACQUIREs are lost. The Listener counts
// it, logs it and signals Overruns(). What happens to the lost pairs depends
// on who else listens (measured on Linux 6.18):
//
//   - obold alone: the kernel makes a larval state only when its ACQUIRE
//     reached some socket, so a lost ACQUIRE leaves none, and the pair's
//     next packet (a retransmission) raises a fresh ACQUIRE;
//   - with another listener (charon's kernel-netlink, ip xfrm monitor): the
//     larval state exists and holds the pair for net.core.xfrm_acq_expires
//     (30 s) with no further ACQUIRE. The Listener therefore re-reads the
//     larval states after an overrun and delivers those it has not
//     delivered (by sequence number) with Recovered set.
//
// Deduplicate by Pair all the same: a pair may come again once its larval
// state expires.
type Listener struct {
	mc, req *conn // multicast socket; request socket (same namespace) for recovery
	owner   *Owner
	log     *slog.Logger
	acq     chan Acquire
	exp     chan Policy
	over    chan struct{}
	done    chan struct{}
	life    context.Context // cancelled by Close or when the reader stops
	end     context.CancelFunc
	recover chan struct{}  // an overrun asks the recoverer to run (coalesced)
	wg      sync.WaitGroup // reader and recoverer

	seenMu sync.Mutex
	seen   map[uint32]time.Time // sequence numbers delivered, for recovery

	closeOnce sync.Once
	closed    atomic.Bool
	err       error // why the reader stopped; set before done closes

	received, delivered, dropped, foreign, overruns, recovered, decodeErrors, expired atomic.Uint64
	lastDropLog                                                                       atomic.Int64
}

// Listen subscribes to ACQUIREs in the current thread's network namespace.
// The Listener stops when ctx ends or Close is called; Acquires() is then
// closed.
func Listen(ctx context.Context, cfg ListenConfig) (*Listener, error) {
	if cfg.Queue <= 0 {
		cfg.Queue = 256
	}
	if cfg.RcvBuf <= 0 {
		cfg.RcvBuf = 4 << 20
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	groups := []int{groupAcquire}
	if cfg.Expiries {
		groups = append(groups, groupExpire)
	}
	mc, err := dial(groups...)
	if err != nil {
		return nil, fmt.Errorf("xfrm: listen for ACQUIREs: %w; obold needs CAP_NET_ADMIN", err)
	}
	if err := mc.setRcvBuf(cfg.RcvBuf); err != nil {
		cfg.Log.Warn("xfrm: cannot enlarge the ACQUIRE socket buffer; bursts may overrun it", "bytes", cfg.RcvBuf, "err", err)
	}
	req, err := dial()
	if err != nil {
		mc.Close()
		return nil, fmt.Errorf("xfrm: listen for ACQUIREs: %w", err)
	}
	life, end := context.WithCancel(context.Background())
	l := &Listener{
		mc: mc, req: req, owner: cfg.Owner, log: cfg.Log,
		acq:     make(chan Acquire, cfg.Queue),
		exp:     make(chan Policy, cfg.Queue),
		over:    make(chan struct{}, 1),
		done:    make(chan struct{}),
		life:    life,
		end:     end,
		recover: make(chan struct{}, 1),
		seen:    map[uint32]time.Time{},
	}
	if l.owner != nil {
		o := l.owner.withDefaults()
		l.owner = &o
	}
	stop := context.AfterFunc(ctx, func() { l.Close() })
	l.wg.Add(2)
	go l.run()
	go l.recoverer()
	go func() {
		l.wg.Wait()
		l.mc.Close()
		l.req.Close()
		close(l.acq)
		close(l.exp)
		close(l.done)
		stop()
	}()
	return l, nil
}

// Acquires delivers the decoded ACQUIREs; it is closed when the Listener
// stops.
func (l *Listener) Acquires() <-chan Acquire { return l.acq }

// Expired delivers policies the kernel deleted on their lifetime (with
// ListenConfig.Expiries); closed when the Listener stops.
func (l *Listener) Expired() <-chan Policy { return l.exp }

// Overruns receives a value (coalesced) after each socket overrun.
func (l *Listener) Overruns() <-chan struct{} { return l.over }

// Done is closed when the Listener has stopped.
func (l *Listener) Done() <-chan struct{} { return l.done }

// Err says why the Listener stopped: nil after Close or the end of its
// context, the socket error otherwise. Valid after Done is closed.
func (l *Listener) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// Stats returns the counters.
func (l *Listener) Stats() ListenerStats {
	return ListenerStats{
		Received: l.received.Load(), Delivered: l.delivered.Load(), Dropped: l.dropped.Load(),
		Foreign: l.foreign.Load(), Overruns: l.overruns.Load(), Recovered: l.recovered.Load(),
		DecodeErrors: l.decodeErrors.Load(), Expired: l.expired.Load(),
	}
}

// Close stops the Listener and waits until it has stopped; it is
// idempotent. The Listener closes its sockets when it stops, also after a
// socket error.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		l.end()
		if cerr := l.mc.Close(); cerr != nil && !errors.Is(cerr, os.ErrClosed) { // wakes the reader
			err = cerr
		}
		<-l.done
	})
	return err
}

func (l *Listener) run() {
	defer l.wg.Done()
	defer l.end() // stops the recoverer
	for {
		dg, err := l.mc.recv()
		now := time.Now()
		switch {
		case errors.Is(err, unix.ENOBUFS):
			l.overrun()
			continue
		case err != nil && l.closed.Load():
			return
		case err != nil:
			l.err = fmt.Errorf("xfrm: ACQUIRE listener: receive: %w", err)
			l.log.Error("xfrm: ACQUIRE listener stopped", "err", err)
			return
		}
		l.handle(dg, now)
	}
}

func (l *Listener) handle(dg []byte, now time.Time) {
	ms, err := splitMessages(dg)
	if err != nil {
		l.decodeErrors.Add(1)
		l.log.Warn("xfrm: undecodable netlink datagram", "err", err)
	}
	for _, m := range ms {
		switch m.typ {
		case msgAcquire:
			a, err := parseAcquireAt(m.payload, m.off)
			if err != nil {
				l.decodeErrors.Add(1)
				l.log.Warn("xfrm: undecodable ACQUIRE; the pair's traffic stays trapped until the larval state expires", "err", err)
				continue
			}
			l.received.Add(1)
			if l.owner != nil && !l.owner.Owns(a.Policy) {
				l.foreign.Add(1)
				continue
			}
			a.Received = now
			l.deliver(a)
		case msgPolExpire:
			p, hard, err := ParsePolExpire(m.payload)
			if err != nil {
				l.decodeErrors.Add(1)
				l.log.Warn("xfrm: undecodable POLEXPIRE", "err", err)
				continue
			}
			if !hard || (l.owner != nil && !l.owner.Owns(p)) {
				continue
			}
			select {
			case l.exp <- p:
				l.expired.Add(1)
			default:
				l.dropped.Add(1)
			}
		}
	}
}

// deliver queues a without blocking. A full queue drops it and asks the
// recoverer to deliver it again from its larval state later.
func (l *Listener) deliver(a Acquire) bool {
	select {
	case l.acq <- a:
		l.delivered.Add(1)
		l.remember(a.Seq, a.Received)
		return true
	default:
		n := l.dropped.Add(1)
		if t := time.Now().Unix(); l.lastDropLog.Swap(t) != t {
			l.log.Warn("xfrm: ACQUIRE queue full; dropped for now, to be re-read from the larval state",
				"pair", a.Pair().String(), "dropped_total", n)
		}
		l.askRecovery()
		return false
	}
}

func (l *Listener) askRecovery() {
	select {
	case l.recover <- struct{}{}:
	default:
	}
}

// seenTTL outlives any larval state (net.core.xfrm_acq_expires, 30 s by
// default).
const seenTTL = 5 * time.Minute

func (l *Listener) remember(seq uint32, now time.Time) {
	l.seenMu.Lock()
	defer l.seenMu.Unlock()
	l.seen[seq] = now
	if len(l.seen)%1024 == 0 {
		for s, t := range l.seen {
			if now.Sub(t) > seenTTL {
				delete(l.seen, s)
			}
		}
	}
}

func (l *Listener) wasDelivered(seq uint32) bool {
	l.seenMu.Lock()
	defer l.seenMu.Unlock()
	_, ok := l.seen[seq]
	return ok
}

// overrun counts an ENOBUFS, signals it and asks for a recovery.
func (l *Listener) overrun() {
	n := l.overruns.Add(1)
	l.log.Warn("xfrm: the kernel dropped ACQUIREs for obold (socket overrun); re-reading the pending ones", "overruns", n)
	select {
	case l.over <- struct{}{}:
	default:
	}
	l.askRecovery()
}

// recoveryDelay gathers a burst of overruns into one state dump; it backs
// off to maxRecoveryDelay while the queue stays full.
const (
	recoveryDelay    = 20 * time.Millisecond
	maxRecoveryDelay = time.Second
)

// recoverer re-reads the larval states after overruns and drops, and
// delivers those whose ACQUIRE obold has not delivered.
func (l *Listener) recoverer() {
	defer l.wg.Done()
	delay := recoveryDelay
	for {
		select {
		case <-l.life.Done():
			return
		case <-l.recover:
		}
		select {
		case <-l.life.Done():
			return
		case <-time.After(delay):
		}
		select { // overruns during the delay are covered by this dump
		case <-l.recover:
		default:
		}
		ctx, cancel := context.WithTimeout(l.life, 5*time.Second)
		msgs, err := l.req.request(ctx, msgGetSA, true, nil)
		cancel()
		var as []Acquire
		if err == nil {
			as, err = larvals(msgs)
		}
		if err != nil && l.life.Err() != nil {
			return
		}
		if err != nil {
			l.log.Error("xfrm: cannot re-read the pending ACQUIREs after an overrun; their pairs stay trapped until the larval states expire",
				"err", kernelErr(err))
			continue
		}
		now := time.Now()
		n, full := 0, false
		for _, a := range as {
			if l.wasDelivered(a.Seq) {
				continue
			}
			if l.owner != nil && !l.owner.IsReqID(a.ReqID) {
				continue // another trap's larval state (charon's, say)
			}
			a.Received = now
			if !l.deliver(a) {
				full = true
				break
			}
			l.recovered.Add(1)
			n++
		}
		if full {
			delay = min(2*delay, maxRecoveryDelay)
		} else {
			delay = recoveryDelay
		}
		l.log.Info("xfrm: re-read the pending ACQUIREs", "larval_states", len(as), "recovered", n, "queue_full", full)
	}
}
