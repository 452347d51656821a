package vici

import (
	"bytes"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"
)

// fakeCharon is a tiny VICI server for unit tests of the client logic:
// commands answered by handlers, event (un)registration, streamed events,
// published events, and "dying" (closing every connection and the socket).
type fakeCharon struct {
	t    *testing.T
	path string

	mu       sync.Mutex
	ln       net.Listener
	conns    map[*fakeConn]bool
	handlers map[string]func(c *fakeConn, req *govici.Message) *govici.Message
	reqs     []fakeReq
	// eventBeforeConfirm makes every event registration answer with one
	// event of each name subscribed before, ahead of its confirmation: the
	// interleaving that deadlocks govici's Subscribe.
	eventBeforeConfirm bool
	wg                 sync.WaitGroup
}

type fakeReq struct {
	cmd string
	msg *govici.Message
}

type fakeConn struct {
	srv  *fakeCharon
	c    net.Conn
	wmu  sync.Mutex
	subs map[string]bool // guarded by srv.mu
}

func newFake(t *testing.T) *fakeCharon {
	t.Helper()
	f := &fakeCharon{
		t:        t,
		path:     t.TempDir() + "/charon.vici",
		conns:    make(map[*fakeConn]bool),
		handlers: make(map[string]func(*fakeConn, *govici.Message) *govici.Message),
	}
	f.handle("version", func(*fakeConn, *govici.Message) *govici.Message {
		return msg("daemon", "charon-systemd", "version", "5.9.8", "sysname", "Linux", "release", "6.18", "machine", "x86_64")
	})
	f.start()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeCharon) handle(cmd string, h func(*fakeConn, *govici.Message) *govici.Message) {
	f.mu.Lock()
	f.handlers[cmd] = h
	f.mu.Unlock()
}

func (f *fakeCharon) requests(cmd string) []*govici.Message {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*govici.Message
	for _, r := range f.reqs {
		if r.cmd == cmd {
			out = append(out, r.msg)
		}
	}
	return out
}

// start listens (again) on the socket path.
func (f *fakeCharon) start() {
	_ = os.Remove(f.path)
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		f.t.Fatal(err)
	}
	f.mu.Lock()
	f.ln = ln
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fc := &fakeConn{srv: f, c: c, subs: make(map[string]bool)}
			f.mu.Lock()
			f.conns[fc] = true
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				fc.serve()
			}()
		}
	}()
}

// stop is charon dying: the socket goes, every connection closes.
func (f *fakeCharon) stop() {
	f.mu.Lock()
	if f.ln != nil {
		_ = f.ln.Close()
		f.ln = nil
	}
	for c := range f.conns {
		_ = c.c.Close()
		delete(f.conns, c)
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// publish sends an event to every connection subscribed to name.
func (f *fakeCharon) publish(name string, m *govici.Message) {
	f.mu.Lock()
	var to []*fakeConn
	for c := range f.conns {
		if c.subs[name] {
			to = append(to, c)
		}
	}
	f.mu.Unlock()
	for _, c := range to {
		c.send(pktEvent, name, m)
	}
}

// subscribers counts connections subscribed to name.
func (f *fakeCharon) subscribers(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for c := range f.conns {
		if c.subs[name] {
			n++
		}
	}
	return n
}

func (c *fakeConn) send(ptype byte, name string, m *govici.Message) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, _ = c.c.Write(encodePacket(ptype, name, m))
}

// stream sends event name on this connection if it is subscribed (as
// charon streams list-sa only to the asking client).
func (c *fakeConn) stream(name string, m *govici.Message) {
	c.srv.mu.Lock()
	ok := c.subs[name]
	c.srv.mu.Unlock()
	if ok {
		c.send(pktEvent, name, m)
	}
}

func (c *fakeConn) serve() {
	defer c.c.Close()
	for {
		frame, err := readFrame(c.c)
		if err != nil {
			return
		}
		p := frame[4:]
		if len(p) < 2 || len(p) < 2+int(p[1]) {
			return
		}
		n := int(p[1])
		ptype, name, body := p[0], string(p[2:2+n]), p[2+n:]
		switch ptype {
		case pktCmdRequest:
			m, err := decodeBody(body)
			if err != nil {
				c.srv.t.Errorf("fake charon: bad request %s: %v", name, err)
				return
			}
			c.srv.mu.Lock()
			c.srv.reqs = append(c.srv.reqs, fakeReq{name, m})
			h := c.srv.handlers[name]
			c.srv.mu.Unlock()
			if h == nil {
				c.send(pktCmdUnknown, "", nil)
				continue
			}
			c.send(pktCmdResponse, "", h(c, m))
		case pktEventRegister:
			c.srv.mu.Lock()
			var early []string
			if c.srv.eventBeforeConfirm {
				for _, n := range eventNames {
					if c.subs[string(n)] {
						early = append(early, string(n))
					}
				}
			}
			c.subs[name] = true
			c.srv.mu.Unlock()
			for _, n := range early {
				c.send(pktEvent, n, sampleEvent(n, "before confirming "+name))
			}
			c.send(pktEventConfirm, "", nil)
		case pktEventUnreg:
			c.srv.mu.Lock()
			delete(c.subs, name)
			c.srv.mu.Unlock()
			c.send(pktEventConfirm, "", nil)
		}
	}
}

// checkLeaks fails the test if goroutines of this package or govici are
// still running a while after the test ended.
func checkLeaks(t *testing.T) {
	t.Helper()
	t.Cleanup(func() {
		var left []string
		for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			left = ourGoroutines()
			if len(left) == 0 {
				return
			}
		}
		t.Errorf("%d goroutines leaked:\n%s", len(left), strings.Join(left, "\n\n"))
	})
}

func ourGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		if strings.Contains(s, "ourGoroutines") || strings.Contains(s, "fakeCharon") || strings.Contains(s, "fakeConn") {
			continue
		}
		if strings.Contains(s, "strongswan/govici") || strings.Contains(s, "obol/vici.(*") || strings.Contains(s, "obol/vici.WatchEvents") {
			out = append(out, s)
		}
	}
	return out
}

// next reads one event from the stream, failing the test after d.
func next(t *testing.T, c <-chan Event, d time.Duration) Event {
	t.Helper()
	select {
	case ev, ok := <-c:
		if !ok {
			t.Fatal("event stream closed")
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no event within %s", d)
	}
	return Event{}
}

// sampleEvent is a valid event of the given name; note ends up in the
// log message or as the IKE_SA's local-id.
func sampleEvent(name, note string) *govici.Message {
	switch EventKind(name) {
	case EventIKEUpDown:
		return msg("up", "yes", "gw-gw", sampleIKE("local-id", note))
	case EventChildUpDown:
		return msg("up", "yes", "gw-gw", sampleIKE("local-id", note, "child-sas", msg("net-4", sampleChild())))
	case EventIKERekey:
		return msg("gw-gw", msg("old", sampleIKE("local-id", note), "new", sampleIKE("uniqueid", "7")))
	case EventChildRekey:
		return msg("gw-gw", sampleIKE("local-id", note, "child-sas", msg("net", msg("old", sampleChild(), "new", sampleChild("uniqueid", "5")))))
	}
	return msg("group", "CFG", "level", "1", "thread", "7", "msg", note)
}
