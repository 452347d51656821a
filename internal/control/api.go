package control

import (
	"time"

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
