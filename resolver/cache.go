package resolver

import (
	"net/netip"
	"sync"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

// qkey names one DNS question: a canonical (lowercase, fully qualified)
// name and a record type.
type qkey struct {
	name  string
	qtype uint16
}

// entry is one processed DNS answer, as cached and shared between lookups.
// It is immutable once built.
type entry struct {
	key      qkey
	status   plugins.DNSSECStatus
	negative bool // NXDOMAIN, NODATA or bogus: no records
	nxdomain bool
	dels     []delegation
	addrs    []netip.Addr // A and AAAA answers
	skipped  []string
	ignored  int    // TXT records of other applications
	reason   string // why the answer is bogus
	expires  time.Time
	size     int // estimated bytes, for the cache's budget

	prev, next *entry // LRU ring, guarded by cache.mu
}

// estimateSize approximates the memory an entry holds.
func (e *entry) estimateSize() int {
	n := 192 + len(e.key.name) + len(e.reason)
	for _, d := range e.dels {
		n += 96 + len(d.fqdn)
		for _, k := range d.keys {
			n += 48 + len(k.Algorithm) + len(k.Data)
		}
	}
	n += 24 * len(e.addrs)
	for _, s := range e.skipped {
		n += 16 + len(s)
	}
	return n
}

// cache is a size-bounded LRU of entries with expiry. A zero maxEntries
// disables it.
type cache struct {
	mu         sync.Mutex
	maxEntries int
	maxBytes   int
	bytes      int
	m          map[qkey]*entry
	root       entry // ring sentinel: root.next is the most recently used
}

func newCache(maxEntries, maxBytes int) *cache {
	c := &cache{maxEntries: maxEntries, maxBytes: maxBytes, m: make(map[qkey]*entry)}
	c.root.next, c.root.prev = &c.root, &c.root
	return c
}

func (c *cache) unlink(e *entry) {
	e.prev.next, e.next.prev = e.next, e.prev
	e.prev, e.next = nil, nil
}

func (c *cache) pushFront(e *entry) {
	e.prev, e.next = &c.root, c.root.next
	c.root.next.prev = e
	c.root.next = e
}

// get returns the live entry for k, or nil. An expired entry is dropped.
func (c *cache) get(k qkey, now time.Time) *entry {
	if c.maxEntries == 0 {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.m[k]
	if e == nil {
		return nil
	}
	if !now.Before(e.expires) {
		c.remove(e)
		return nil
	}
	if c.root.next != e {
		c.unlink(e)
		c.pushFront(e)
	}
	return e
}

func (c *cache) remove(e *entry) {
	c.unlink(e)
	delete(c.m, e.key)
	c.bytes -= e.size
}

// put stores e (replacing an entry for the same key) and evicts the least
// recently used entries until both bounds hold. It returns how many
// entries it evicted. An entry larger than the whole budget is not stored.
func (c *cache) put(e *entry) (evicted int) {
	if c.maxEntries == 0 || e.size > c.maxBytes {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[e.key]; old != nil {
		c.remove(old)
	}
	c.m[e.key] = e
	c.pushFront(e)
	c.bytes += e.size
	for len(c.m) > c.maxEntries || c.bytes > c.maxBytes {
		c.remove(c.root.prev)
		evicted++
	}
	return evicted
}

// stats returns the number of entries and their estimated bytes.
func (c *cache) stats() (entries, bytes int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m), c.bytes
}

// purge drops every entry.
func (c *cache) purge() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = make(map[qkey]*entry)
	c.root.next, c.root.prev = &c.root, &c.root
	c.bytes = 0
}
