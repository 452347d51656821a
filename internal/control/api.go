package control

import (
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// Methods obold serves.
const (
	MethodStatus = "status"
	MethodSAs    = "sas"
	MethodConns  = "conns"
	MethodEvents = "events"
	MethodReload = "reload"
)

// Status answers MethodStatus.
type Status struct {
	Obold  OboldStatus  `json:"obold"`
	Charon CharonStatus `json:"charon"`
}

// OboldStatus is the daemon's own state.
type OboldStatus struct {
	Version    string         `json:"version"`
	PID        int            `json:"pid"`
	Started    time.Time      `json:"started"`
	Config     string         `json:"config"`
	ConnPrefix string         `json:"conn_prefix"`
	OwnedConns []string       `json:"owned_conns"`
	Events     map[string]int `json:"events"`
	// Reconnects counts how often charon came back after going away.
	Reconnects int `json:"reconnects"`
	// LastResync is when obold last resynced with charon; ResyncTook how
	// long that took from charon answering to obold's conns being loaded.
	LastResync time.Time     `json:"last_resync"`
	ResyncTook time.Duration `json:"resync_took"`
	LastError  string        `json:"last_error,omitempty"`
	// Modules says how each module runs: "built-in", "off", or what the
	// module describes (a plugin: its path, pid and restarts).
	Modules map[string]string `json:"modules"`
	// HeapInUse is the Go heap occupied by objects, live or not yet
	// collected (bytes): with RSS, what obold's state costs.
	HeapInUse uint64 `json:"heap_in_use"`
}

// CharonStatus is what obold knows of charon.
type CharonStatus struct {
	Connected bool          `json:"connected"`
	Socket    string        `json:"socket"`
	Daemon    string        `json:"daemon,omitempty"`
	Version   string        `json:"version,omitempty"`
	Since     time.Time     `json:"since,omitempty"`
	Uptime    time.Duration `json:"uptime,omitempty"`
	IKESAs    int           `json:"ike_sas"`
	HalfOpen  int           `json:"half_open"`
	Datapath  string        `json:"datapath,omitempty"`
	Plugins   []string      `json:"plugins,omitempty"`
	LastError string        `json:"last_error,omitempty"`
}

// SA is one IKE_SA with who owns its conn: "obold" for conns with obold's
// prefix, "other" for swanctl's and anyone else's.
type SA struct {
	Owner string `json:"owner"`
	vici.IKESA
}

// ConnEntry is one conn loaded in charon.
type ConnEntry struct {
	Name  string `json:"name"`
	Owner string `json:"owner"`
}

// EventsParams narrows MethodEvents.
type EventsParams struct {
	// Kinds to return; empty returns all but log lines.
	Kinds []string `json:"kinds,omitempty"`
	Limit int      `json:"limit,omitempty"`
}

// EventRecord is one event obold saw.
type EventRecord struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Up       bool      `json:"up,omitempty"`
	IKE      string    `json:"ike,omitempty"`
	IKEID    uint32    `json:"ike_id,omitempty"`
	RemoteID string    `json:"remote_id,omitempty"`
	Child    string    `json:"child,omitempty"`
	ChildID  uint32    `json:"child_id,omitempty"`
	Message  string    `json:"message,omitempty"`
}

// MethodLabelsRequest asks for an SA for a labeled flow, the way a kernel
// ACQUIRE carrying a security context does.
const MethodLabelsRequest = "labels-request"

// LabelsRequest is a flow and its data label.
type LabelsRequest struct {
	Local      string `json:"local"`  // address or CIDR
	Remote     string `json:"remote"` // address or CIDR
	Protocol   uint8  `json:"protocol,omitempty"`
	RemotePort uint16 `json:"remote_port,omitempty"`
	Label      string `json:"label"`
}

// LabelsAnswer says what obold decided and did for a LabelsRequest.
type LabelsAnswer struct {
	Allowed bool   `json:"allowed"`
	Entry   string `json:"entry,omitempty"`
	Reason  string `json:"reason"`
	// Conn and Child name the CHILD_SA config obold initiated.
	Conn  string `json:"conn,omitempty"`
	Child string `json:"child,omitempty"`
	// Established is true when charon brought the CHILD_SA up (or it was up).
	Established bool `json:"established"`
	// Refused says why charon or the peer refused, when they did.
	Refused string `json:"refused,omitempty"`
}

// MethodOEList lists the OE engine's tunnels ([]oe.Tunnel).
const MethodOEList = "oe-list"

// MethodOELookup asks what DNS says about an address and what obold's OE
// would do with traffic to it (params OELookupParams, result OELookup).
const MethodOELookup = "oe-lookup"

// CodeOEOff is the error code of OE methods when obold runs no OE.
const CodeOEOff = "oe_off"

// OELookupParams names the address to look up.
type OELookupParams struct {
	Addr string `json:"addr"`
}

// OELookup answers MethodOELookup: the policy decision, the DNS answer and
// the action that follows from them, in words.
type OELookup struct {
	Addr   string         `json:"addr"`
	Policy OELookupPolicy `json:"policy"`
	DNS    OELookupDNS    `json:"dns"`
	// Action is what obold would do with traffic to Addr now, e.g. "would
	// initiate OE to gateway 192.0.2.2 (IPSECKEY, DNSSEC secure)".
	Action string `json:"action"`
	// Details explain Action: shunts while IKE runs and after a failure,
	// fail-over gateways, a backoff in force.
	Details []string `json:"details,omitempty"`
	// Responder is what obold would do if Addr initiated OE to this host.
	Responder string `json:"responder"`
	// Tunnels are the OE pairs obold has now with Addr as the peer.
	Tunnels []OELookupTunnel `json:"tunnels,omitempty"`
}

// OELookupPolicy is the policy group decision for an address.
type OELookupPolicy struct {
	Group string `json:"group"`
	// CIDR is the most specific [[oe.group]] CIDR that matched; "" when
	// the address is exempt or no group covers it (clear by default).
	CIDR             string        `json:"cidr,omitempty"`
	NegotiationShunt string        `json:"negotiation_shunt"`
	FailureShunt     string        `json:"failure_shunt"`
	ShuntLifetime    time.Duration `json:"shunt_lifetime,omitempty"`
	// Exempt says why OE never applies to the address ("" if it may).
	Exempt string `json:"exempt,omitempty"`
}

// OELookupDNS is the resolver's answer for an address.
type OELookupDNS struct {
	// Name is the reverse-map name asked.
	Name      string            `json:"name"`
	DNSSEC    string            `json:"dnssec,omitempty"`
	TTL       time.Duration     `json:"ttl"`
	FromCache bool              `json:"from_cache,omitempty"`
	Gateways  []OELookupGateway `json:"gateways"`
	// Skipped lists records not used, each with the reason.
	Skipped []string `json:"skipped,omitempty"`
	// Unusable says why the answer must not be used (bogus, or insecure
	// under require_dnssec).
	Unusable string `json:"unusable,omitempty"`
	// Error is set when DNS gave no answer (timeout, SERVFAIL, ...).
	Error string `json:"error,omitempty"`
}

// OELookupGateway is one gateway DNS names for the address.
type OELookupGateway struct {
	Precedence int    `json:"precedence"`
	Address    string `json:"address,omitempty"`
	FQDN       string `json:"fqdn,omitempty"`
	// Source is the record type(s) it came from: "IPSECKEY", "TXT",
	// "KEY" or several joined with "+".
	Source string        `json:"source"`
	Keys   []OELookupKey `json:"keys"`
}

// OELookupKey identifies a public key without its bytes.
type OELookupKey struct {
	Algorithm string `json:"algorithm"` // "rsa" or "ed25519"
	Bits      int    `json:"bits,omitempty"`
	// KeyID is the SHA-1 of the subjectPublicKey (pki --keyid "subjkey").
	KeyID string `json:"key_id"`
}

// OELookupTunnel is an OE pair obold has with the looked-up peer.
type OELookupTunnel struct {
	Pair    string    `json:"pair"`
	Role    string    `json:"role"`
	State   string    `json:"state"`
	Gateway string    `json:"gateway,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Until   time.Time `json:"until,omitzero"`
}

// MethodXFRMCheck compares obold's wanted kernel policies with the kernel's.
const MethodXFRMCheck = "xfrm-check"

// XFRMReport answers MethodXFRMCheck. Missing: wanted, not in the kernel.
// Extra: in the kernel with a wanted selector but another action, priority
// or lifetime. Stale: obold's in the kernel, no longer wanted.
type XFRMReport struct {
	Datapath string           `json:"datapath"`
	Wanted   int              `json:"wanted"`
	OK       bool             `json:"ok"`
	Missing  []plugins.Policy `json:"missing"`
	Extra    []plugins.Policy `json:"extra"`
	Stale    []plugins.Policy `json:"stale"`
}
