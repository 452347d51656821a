package daemon

import (
	"slices"
	"sync"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/vici"
)

// eventLog keeps the last events obold saw, for obolctl and the tests.
type eventLog struct {
	mu   sync.Mutex
	seq  uint64
	ring []control.EventRecord
	next int
	full bool
}

func newEventLog(n int) *eventLog { return &eventLog{ring: make([]control.EventRecord, n)} }

func (l *eventLog) add(ev vici.Event) {
	r := control.EventRecord{Time: ev.Time, Kind: string(ev.Kind), Up: ev.Up}
	if ev.SA != nil {
		r.IKE, r.IKEID, r.RemoteID = ev.SA.Name, ev.SA.UniqueID, ev.SA.RemoteID
		if len(ev.SA.Children) > 0 {
			r.Child, r.ChildID = ev.SA.Children[0].Name, ev.SA.Children[0].UniqueID
		}
	}
	if ev.Log != nil {
		r.Message = ev.Log.Message
		r.IKE, r.IKEID = ev.Log.IKEName, ev.Log.IKEID
	}
	if ev.Err != nil {
		r.Message = ev.Err.Error()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	r.Seq = l.seq
	l.ring[l.next] = r
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
}

// list returns matching events, oldest first.
func (l *eventLog) list(p control.EventsParams) []control.EventRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []control.EventRecord
	if l.full {
		all = append(all, l.ring[l.next:]...)
	}
	all = append(all, l.ring[:l.next]...)
	out := []control.EventRecord{}
	for _, r := range all {
		if len(p.Kinds) == 0 && r.Kind == string(vici.EventLog) {
			continue
		}
		if len(p.Kinds) > 0 && !slices.Contains(p.Kinds, r.Kind) {
			continue
		}
		out = append(out, r)
	}
	if p.Limit > 0 && len(out) > p.Limit {
		out = out[len(out)-p.Limit:]
	}
	return out
}
