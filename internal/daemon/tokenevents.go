package daemon

import (
	"context"
	"strings"
	"sync"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// changeQueue bounds what one token API module may fall behind by.
const changeQueue = 256

// changeHub fans charon's SA changes out to the token API module's
// watchers. A full watcher misses changes and learns so (TokenChangeLost)
// instead of holding up obold's event loop.
type changeHub struct {
	mu       sync.Mutex
	watchers map[*changeWatcher]struct{}
}

type changeWatcher struct {
	ch   chan plugins.TokenChange
	lost bool // a change was dropped; a TokenChangeLost is owed
}

var _ plugins.TokenChangeSource = (*tokenHost)(nil)

// TokenChanges implements plugins.TokenChangeSource.
func (h *tokenHost) TokenChanges(ctx context.Context) <-chan plugins.TokenChange {
	w := &changeWatcher{ch: make(chan plugins.TokenChange, changeQueue)}
	h.changes.mu.Lock()
	if h.changes.watchers == nil {
		h.changes.watchers = map[*changeWatcher]struct{}{}
	}
	h.changes.watchers[w] = struct{}{}
	h.changes.mu.Unlock()
	context.AfterFunc(ctx, func() {
		h.changes.mu.Lock()
		defer h.changes.mu.Unlock()
		delete(h.changes.watchers, w)
		close(w.ch)
	})
	return w.ch
}

func (hub *changeHub) publish(c plugins.TokenChange) {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for w := range hub.watchers {
		if w.lost {
			select {
			case w.ch <- plugins.TokenChange{Kind: plugins.TokenChangeLost}:
				w.lost = false
			default:
				continue
			}
		}
		select {
		case w.ch <- c:
		default:
			w.lost = true
		}
	}
}

// Log lines charon 5.9.8 writes when a rekeying fails and it keeps the old
// SA (child_rekey.c and ike_rekey.c, schedule_delayed_rekey). No VICI event
// reports a failed rekey; charon retries some seconds later.
const (
	childRekeyFailedLine = "CHILD_SA rekeying failed"
	ikeRekeyFailedLine   = "IKE_SA rekeying failed"
)

// tokenChange maps one of charon's events to what the token API module
// cares about; ok is false for events that change nothing it reports.
func tokenChange(ev vici.Event) (plugins.TokenChange, bool) {
	name := func() string {
		if ev.SA != nil {
			return ev.SA.Name
		}
		return ""
	}
	child := func() string {
		if ev.SA != nil && len(ev.SA.Children) > 0 {
			return ev.SA.Children[0].Name
		}
		return ""
	}
	switch ev.Kind {
	case vici.EventIKEUpDown, vici.EventChildUpDown:
		k := plugins.TokenChangeDown
		if ev.Up {
			k = plugins.TokenChangeUp
		}
		c := plugins.TokenChange{Kind: k, IKEName: name()}
		if ev.Kind == vici.EventChildUpDown {
			c.Child = child()
		}
		return c, true
	case vici.EventChildRekey:
		return plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: name(), Child: child()}, true
	case vici.EventIKERekey:
		return plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: name()}, true
	case vici.EventConnected, vici.EventDisconnected, vici.EventLost:
		return plugins.TokenChange{Kind: plugins.TokenChangeReset}, true
	case vici.EventLog:
		if ev.Log == nil {
			return plugins.TokenChange{}, false
		}
		if strings.Contains(ev.Log.Message, childRekeyFailedLine) || strings.Contains(ev.Log.Message, ikeRekeyFailedLine) {
			return plugins.TokenChange{Kind: plugins.TokenChangeRekeyFailed, IKEName: ev.Log.IKEName, Text: ev.Log.Message}, true
		}
	}
	return plugins.TokenChange{}, false
}
