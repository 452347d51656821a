// Package vici is obol's typed client for charon's VICI interface. The rest of
// obol speaks only these types; raw govici messages never leave this package.
//
// A Client serves commands and redials charon by itself after a restart;
// WatchEvents delivers updown, rekey and log events on one channel and
// resyncs the SA list after every (re)connect. Both work around govici
// v0.8.1's pitfalls (frameconn.go, session.go); decoding is done by pure
// functions (decode.go) that report which SA and field charon got wrong.
package vici

import (
	"net/netip"
	"time"
)

// Version is charon's answer to the VICI "version" command.
type Version struct {
	Daemon  string `json:"daemon"`
	Version string `json:"version"`
	Sysname string `json:"sysname"`
	Release string `json:"release"`
	Machine string `json:"machine"`
}

// Stats is charon's answer to the VICI "stats" command, reduced to what obol uses.
type Stats struct {
	// Since is when charon started; Uptime is how long ago that was, as charon reports it.
	Since  time.Time     `json:"since"`
	Uptime time.Duration `json:"uptime"`
	// IKESAs and HalfOpen count the IKE_SAs charon holds.
	IKESAs   int `json:"ike_sas"`
	HalfOpen int `json:"half_open"`
	// WorkersTotal and WorkersIdle count charon's worker threads; every
	// blocking initiate/terminate holds one, so few idle workers mean charon is saturated.
	WorkersTotal int `json:"workers_total"`
	WorkersIdle  int `json:"workers_idle"`
	// Plugins lists the loaded plugins: "kernel-libipsec" there means a userspace ESP datapath.
	Plugins []string `json:"plugins"`
}

// Conn is a connection for load-conn. Durations of zero and empty fields are
// left out, so charon applies its own defaults.
type Conn struct {
	Name        string   `json:"name"`
	Version     int      `json:"version,omitempty"` // 1, 2 or 0 for any; obol uses 2
	LocalAddrs  []string `json:"local_addrs,omitempty"`
	RemoteAddrs []string `json:"remote_addrs,omitempty"`
	LocalPort   uint16   `json:"local_port,omitempty"`
	RemotePort  uint16   `json:"remote_port,omitempty"`
	Proposals   []string `json:"proposals,omitempty"`
	Encap       bool     `json:"encap,omitempty"`
	// Mobike nil leaves charon's default (yes).
	Mobike      *bool         `json:"mobike,omitempty"`
	DPDDelay    time.Duration `json:"dpd_delay,omitempty"`
	RekeyTime   time.Duration `json:"rekey_time,omitempty"`
	ReauthTime  time.Duration `json:"reauth_time,omitempty"`
	OverTime    time.Duration `json:"over_time,omitempty"`
	Unique      string        `json:"unique,omitempty"` // no|never|keep|replace
	KeyingTries int           `json:"keyingtries,omitempty"`
	// Local and Remote are authentication rounds, sent in this order as local-1, local-2, ...
	Local    []Auth  `json:"local"`
	Remote   []Auth  `json:"remote"`
	Children []Child `json:"children"`
}

// Auth is one authentication round of a Conn.
type Auth struct {
	Auth string `json:"auth,omitempty"` // pubkey|psk|eap-...|xauth
	ID   string `json:"id,omitempty"`
	// Certs and CACerts are certificate blobs (PEM or DER); Pubkeys are raw
	// public key blobs (PEM or DER). charon binds each pubkey to ID.
	Certs            [][]byte `json:"-"`
	CACerts          [][]byte `json:"-"`
	Pubkeys          [][]byte `json:"-"`
	EAPID            string   `json:"eap_id,omitempty"`
	Groups           []string `json:"groups,omitempty"`
	CertPolicy       []string `json:"cert_policy,omitempty"`
	RevocationPolicy string   `json:"revocation,omitempty"`
}

// Child is a CHILD_SA config inside a Conn.
type Child struct {
	Name         string        `json:"name"`
	Mode         string        `json:"mode,omitempty"` // tunnel|transport|pass|drop
	LocalTS      []string      `json:"local_ts,omitempty"`
	RemoteTS     []string      `json:"remote_ts,omitempty"`
	ESPProposals []string      `json:"esp_proposals,omitempty"`
	StartAction  string        `json:"start_action,omitempty"` // none|trap|start
	CloseAction  string        `json:"close_action,omitempty"`
	DPDAction    string        `json:"dpd_action,omitempty"`
	Inactivity   time.Duration `json:"inactivity,omitempty"`
	RekeyTime    time.Duration `json:"rekey_time,omitempty"`
	LifeTime     time.Duration `json:"life_time,omitempty"`
	IPComp       bool          `json:"ipcomp,omitempty"`
	// Label is the security label (no trailing NUL); LabelMode is system|simple|selinux.
	Label     string `json:"label,omitempty"`
	LabelMode string `json:"label_mode,omitempty"`
	Updown    string `json:"updown,omitempty"`
	Priority  uint32 `json:"priority,omitempty"`
}

// ConnInfo is one entry of list-conns: what charon has loaded, whoever loaded it.
type ConnInfo struct {
	Name        string        `json:"name"`
	Version     string        `json:"version"`
	LocalAddrs  []string      `json:"local_addrs"`
	RemoteAddrs []string      `json:"remote_addrs"`
	RekeyTime   time.Duration `json:"rekey_time,omitempty"`
	ReauthTime  time.Duration `json:"reauth_time,omitempty"`
	DPDDelay    time.Duration `json:"dpd_delay,omitempty"`
	Unique      string        `json:"unique,omitempty"`
	Local       []AuthInfo    `json:"local"`
	Remote      []AuthInfo    `json:"remote"`
	Children    []ChildInfo   `json:"children"`
}

// AuthInfo is one authentication round as list-conns reports it.
type AuthInfo struct {
	Class  string   `json:"class"` // "public key", "pre-shared key", "EAP", ...
	ID     string   `json:"id,omitempty"`
	EAPID  string   `json:"eap_id,omitempty"`
	Groups []string `json:"groups,omitempty"`
	// Certs are subjects; with raw public keys charon lists the round's ID
	// once per pinned key (it sets each key's subject to the ID).
	Certs      []string `json:"certs,omitempty"`
	CACerts    []string `json:"cacerts,omitempty"` // subjects
	CertPolicy []string `json:"cert_policy,omitempty"`
	Revocation string   `json:"revocation,omitempty"`
}

// ChildInfo is a CHILD_SA config as list-conns reports it.
type ChildInfo struct {
	Name     string   `json:"name"`
	Mode     string   `json:"mode"`
	Label    string   `json:"label,omitempty"`
	LocalTS  []string `json:"local_ts"`
	RemoteTS []string `json:"remote_ts"`
	// StartAction is not reported by charon 5.9.8 (empty there).
	StartAction string        `json:"start_action,omitempty"`
	DPDAction   string        `json:"dpd_action,omitempty"`
	CloseAction string        `json:"close_action,omitempty"`
	RekeyTime   time.Duration `json:"rekey_time,omitempty"`
	Priority    uint32        `json:"priority,omitempty"`
	Interface   string        `json:"interface,omitempty"`
}

// IKESA is one IKE_SA from list-sas or an updown event.
type IKESA struct {
	Name          string     `json:"name"` // the conn that created it
	UniqueID      uint32     `json:"uniqueid"`
	Version       int        `json:"version"`
	State         string     `json:"state"`
	LocalHost     netip.Addr `json:"local_host"`
	LocalPort     uint16     `json:"local_port"`
	LocalID       string     `json:"local_id"`
	RemoteHost    netip.Addr `json:"remote_host"`
	RemotePort    uint16     `json:"remote_port"`
	RemoteID      string     `json:"remote_id"`
	RemoteEAPID   string     `json:"remote_eap_id,omitempty"`
	RemoteXAuthID string     `json:"remote_xauth_id,omitempty"`
	Initiator     bool       `json:"initiator"`
	// SPIs stay inside obol (the token API never shows them).
	InitiatorSPI string `json:"-"`
	ResponderSPI string `json:"-"`
	NATLocal     bool   `json:"nat_local,omitempty"`
	NATRemote    bool   `json:"nat_remote,omitempty"`
	NATFake      bool   `json:"nat_fake,omitempty"`
	NATAny       bool   `json:"nat_any,omitempty"`
	EncrAlg      string `json:"encr_alg,omitempty"`
	EncrKeySize  int    `json:"encr_keysize,omitempty"`
	IntegAlg     string `json:"integ_alg,omitempty"`
	IntegKeySize int    `json:"integ_keysize,omitempty"`
	PRFAlg       string `json:"prf_alg,omitempty"`
	DHGroup      string `json:"dh_group,omitempty"`
	// Established is how long ago the SA was established; RekeyIn/ReauthIn how long until charon rekeys.
	Established time.Duration `json:"established"`
	RekeyIn     time.Duration `json:"rekey_in,omitempty"`
	ReauthIn    time.Duration `json:"reauth_in,omitempty"`
	LocalVIPs   []string      `json:"local_vips,omitempty"`
	RemoteVIPs  []string      `json:"remote_vips,omitempty"`
	Children    []ChildSA     `json:"children"`
}

// ChildSA is one CHILD_SA inside an IKESA.
type ChildSA struct {
	Name     string `json:"name"` // the child config name
	UniqueID uint32 `json:"uniqueid"`
	ReqID    uint32 `json:"reqid"`
	State    string `json:"state"`
	Mode     string `json:"mode"`     // TUNNEL|TRANSPORT|BEET
	Protocol string `json:"protocol"` // ESP|AH
	Encap    bool   `json:"encap"`
	SPIIn    string `json:"-"`
	SPIOut   string `json:"-"`
	// CPIIn/CPIOut are the IPComp CPIs (hex), empty without IPComp.
	CPIIn        string `json:"cpi_in,omitempty"`
	CPIOut       string `json:"cpi_out,omitempty"`
	EncrAlg      string `json:"encr_alg,omitempty"`
	EncrKeySize  int    `json:"encr_keysize,omitempty"`
	IntegAlg     string `json:"integ_alg,omitempty"`
	IntegKeySize int    `json:"integ_keysize,omitempty"`
	PRFAlg       string `json:"prf_alg,omitempty"`
	DHGroup      string `json:"dh_group,omitempty"`
	ESN          bool   `json:"esn"`
	// Label is decoded from list-sas' hex, trailing NUL removed.
	Label       string        `json:"label,omitempty"`
	BytesIn     uint64        `json:"bytes_in"`
	PacketsIn   uint64        `json:"packets_in"`
	BytesOut    uint64        `json:"bytes_out"`
	PacketsOut  uint64        `json:"packets_out"`
	UseIn       time.Duration `json:"use_in"`  // since last inbound packet; -1 if never (0 is meaningful, so no omitempty)
	UseOut      time.Duration `json:"use_out"` // since last outbound packet; -1 if never
	RekeyIn     time.Duration `json:"rekey_in,omitempty"`
	LifeIn      time.Duration `json:"life_in,omitempty"`
	InstallTime time.Duration `json:"install_time"` // how long ago it was installed
	LocalTS     []string      `json:"local_ts"`
	RemoteTS    []string      `json:"remote_ts"`
}

// SASelector narrows list-sas, terminate and rekey. Zero fields do not filter.
type SASelector struct {
	IKE     string // conn name
	IKEID   uint32
	Child   string
	ChildID uint32
}

// Key is a private key for load-key.
type Key struct {
	Type string // rsa|ecdsa|ed25519|ed448|any
	Data []byte // PEM or DER
}

// Shared is a shared secret for load-shared.
type Shared struct {
	ID     string // unique id for unload-shared; obol prefixes its own
	Type   string // ike|eap|xauth|ntlm|ppk
	Data   []byte
	Owners []string // identities the secret belongs to
}

// EventKind names the events of one stream.
type EventKind string

const (
	EventIKEUpDown   EventKind = "ike-updown"
	EventChildUpDown EventKind = "child-updown"
	EventIKERekey    EventKind = "ike-rekey"
	EventChildRekey  EventKind = "child-rekey"
	EventLog         EventKind = "log"
	// EventConnected is sent when the stream (re)connects to charon; SAs
	// then holds a fresh list-sas so the consumer can resync its state.
	EventConnected EventKind = "connected"
	// EventDisconnected is sent when charon goes away (or is not there at
	// the first attempt); Err says why.
	EventDisconnected EventKind = "disconnected"
	// EventLost is sent when events were lost: the consumer did not take
	// them in time (see Options.SlowConsumer) or one could not be decoded.
	// Dropped counts them and Err says why. An EventConnected with fresh
	// SAs always follows, so the consumer's state can be rebuilt.
	EventLost EventKind = "lost"
)

// Event is one item of the stream. For updown events Up tells the direction
// and SA holds the IKE_SA (with the affected CHILD_SA for child-updown).
// For ike-rekey, Old and SA are the old and new IKE_SA. For child-rekey,
// Old and SA are the same IKE_SA: Old.Children holds the old CHILD_SA and
// SA.Children the new one.
type Event struct {
	Kind    EventKind
	Time    time.Time
	Up      bool
	SA      *IKESA
	Old     *IKESA
	Log     *LogLine
	SAs     []IKESA // with EventConnected
	Err     error   // with EventDisconnected and EventLost
	Dropped int     // with EventLost
}

// LogLine is a log event. charon sends levels 0 and 1 only.
type LogLine struct {
	Group   string // IKE, CFG, NET, ...
	Level   int
	Thread  int
	IKEName string
	IKEID   uint32
	Message string
}

// CertFilter selects certificates for ListCerts; empty fields match all.
type CertFilter struct {
	Type    string // X509, X509_AC, X509_CRL, OCSP_RESPONSE, PUBKEY, ANY
	Flag    string // NONE, CA, AA, OCSP, ANY (X.509 only)
	Subject string // an identity the certificate must match (subject or altName)
}

// Cert is one certificate or raw public key from charon's credential sets
// (list-certs): what swanctl or obold loaded, and the peer certificates
// charon cached after verifying them.
type Cert struct {
	Type       string // X509, PUBKEY, ...
	Flag       string // NONE, CA, AA, OCSP (X.509)
	HasPrivKey bool   // the matching private key is loaded
	Data       []byte // DER: the certificate, or the SubjectPublicKeyInfo of a raw key
	Subject    string // raw keys only: the identity charon bound the key to
}
