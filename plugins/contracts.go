package plugins

import (
	"context"
	"net/netip"
	"time"
)

// Resolver finds the IPsec gateways and public keys that DNS publishes for a
// peer (opportunistic encryption, specs/opportunistic-encryption.txt).
type Resolver interface {
	// Lookup asks DNS about one peer. It never blocks past ctx's deadline.
	// An empty Gateways with a nil error means "DNS says: no IPsec here".
	// On error the answer carries what is known (DNSSEC, TTL, Unusable).
	Lookup(ctx context.Context, q LookupQuery) (LookupAnswer, error)
}

// LookupQuery names a peer by address or, for @FQDN identities, by name.
type LookupQuery struct {
	Addr netip.Addr // the peer's address (reverse map)
	FQDN string     // set instead of Addr for a forward lookup
}

// LookupAnswer is what DNS said, with how far it can be trusted.
type LookupAnswer struct {
	Gateways []Gateway
	DNSSEC   DNSSECStatus
	TTL      time.Duration // how long the answer may be cached, negative answers too
	// Name is the DNS name asked (reverse-map name of Addr, or the FQDN).
	Name string
	// Skipped lists records that were not used, each with the reason
	// (malformed, unsupported algorithm, key lookup failed, ...). Reasons
	// travel as fields because errors.Is does not survive a plugin RPC.
	Skipped []string
	// Unusable, when set, says why the answer must not be used (DNSSEC
	// bogus, or insecure while DNSSEC is required); Gateways is then empty
	// and Lookup's error is non-nil.
	Unusable string
	// Method is how the keys are trusted, as the token API reports it
	// (MethodDNSSEC, MethodLeapOfFaith, ...). A Resolver leaves it "": the
	// DNSSEC status then says it. AuthMethods set it.
	Method string
}

// Gateway is one candidate IPsec gateway for a peer, with all its keys
// (several during a key rollover).
type Gateway struct {
	// Precedence orders gateways, lowest first; 65536 for a peer known only
	// from KEY records at its own name.
	Precedence int
	Addr       netip.Addr // the gateway's address, or invalid when FQDN is set
	FQDN       string
	// Addrs are, for a gateway named by FQDN, its addresses from the FQDN's
	// forward map (A, AAAA): where IKE goes. Empty when the name has none;
	// an @FQDN without addresses is the queried peer speaking for itself.
	Addrs []netip.Addr
	Keys  []PublicKey
	// Source is the record it came from: "TXT", "KEY", "IPSECKEY", or several
	// joined with "+" ("IPSECKEY+TXT") when records of different types name it.
	Source string
	// PSK, set by an AuthMethod instead of Keys, is a pre-shared key for
	// this gateway: both ends authenticate with it. It is a secret: never
	// logged, listed or shown (json "-").
	PSK []byte `json:"-"`
	// CACerts (DER), set by an AuthMethod instead of Keys, are the CAs the
	// gateway's certificate must chain to; it proves its identity with that
	// certificate (we still prove ours with our key).
	CACerts [][]byte `json:"-"`
}

// PublicKey is a raw public key as published in DNS.
type PublicKey struct {
	Algorithm string // "rsa" or "ed25519"
	Data      []byte // RFC 3110 wire form for RSA, 32 raw bytes for Ed25519
}

// DNSSECStatus is the validating resolver's verdict on an answer.
type DNSSECStatus string

const (
	DNSSECSecure   DNSSECStatus = "secure"
	DNSSECInsecure DNSSECStatus = "insecure"
	DNSSECBogus    DNSSECStatus = "bogus"
)

// LabelPolicy decides which security labels may use which traffic
// (specs/ikev2-security-label.txt).
type LabelPolicy interface {
	// Authorize says whether a flow carrying Label may use an SA for Flow.
	Authorize(ctx context.Context, r LabelRequest) (LabelDecision, error)
	// Children lists the labeled CHILD_SA configs obold loads for the
	// policy entry called entry: one per label the entry admits.
	Children(ctx context.Context, entry string) ([]LabeledChild, error)
}

// LabeledChild is one labeled CHILD_SA config for charon.
type LabeledChild struct {
	// Name is charon-safe and stable across reloads.
	Name string
	// Label and LabelMode go to charon's label and label_mode.
	Label     string
	LabelMode string
	// Generic is set when Label is the entry's own context (selinux mode:
	// charon puts it on trap policies only, never into an SA).
	Generic bool
	// LocalTS and RemoteTS are the entry's selector in swanctl syntax.
	LocalTS, RemoteTS string
}

// Flow is a traffic selector pair as obol sees it.
type Flow struct {
	Local, Remote netip.Prefix
	Protocol      uint8  // 0 for any
	LocalPort     uint16 // 0 for any
	RemotePort    uint16
}

// LabelRequest asks whether Label may use Flow.
type LabelRequest struct {
	Flow  Flow
	Label string
}

// LabelDecision is the policy's answer; Reason is shown to operators and in
// the token API's WHY answers.
type LabelDecision struct {
	// Entry names the policy entry that decided ("" when none covers the flow).
	Entry     string
	Allowed   bool
	Required  bool   // SAs for this flow must be labeled
	LabelMode string // what to give charon: "simple" or "selinux"
	Reason    string
}

// XFRMChecker owns obold's view of the kernel's IPsec state: which datapath
// charon uses, and whether what obold installed is still what it meant to.
type XFRMChecker interface {
	// Datapath tells where ESP runs, given charon's loaded plugins.
	Datapath(ctx context.Context, charonPlugins []string) (Datapath, error)
	// Check compares the policies obold wants with the kernel's.
	Check(ctx context.Context, want []Policy) (Report, error)
}

// Datapath is where ESP packets are processed.
type Datapath string

const (
	// DatapathKernel: charon's kernel-netlink installs XFRM SAs (kernel ESP).
	DatapathKernel Datapath = "kernel"
	// DatapathUserspace: charon's kernel-libipsec does ESP through a TUN device.
	DatapathUserspace Datapath = "userspace"
)

// Policy is one kernel XFRM policy as obold means it.
type Policy struct {
	Src, Dst netip.Prefix
	Proto    uint8
	Dir      string // "out", "in", "fwd"
	Action   string // "allow", "block", "trap"
	Priority uint32
	// Mark MATCHES the packet's mark (mask 0xffffffff): a policy with a mark
	// applies only to packets carrying it; 0 matches every packet. It does
	// not tell whose policy it is.
	Mark     uint32
	Lifetime time.Duration // zero: until removed
	SrcPort  uint16        // 0: any port; needs Proto (e.g. 17 for IKE bypasses)
	DstPort  uint16
	Label    string // security context of a labeled policy; "" for none
}

// Report is the outcome of Check. Stale entries are obold's own (by the
// XFRM module's ownership marker: priority band and index tag) but no
// longer wanted.
type Report struct {
	Missing []Policy
	Extra   []Policy
	Stale   []Policy
}

// OK says the kernel matches what obold wants.
func (r Report) OK() bool { return len(r.Missing)+len(r.Extra)+len(r.Stale) == 0 }

// Modules is the set obold runs with. A nil field means the module is not
// enabled on this host, and obold works without that capability.
type Modules struct {
	Resolver Resolver
	Labels   LabelPolicy
	XFRM     XFRMChecker
	TokenAPI TokenAPI
}

// Describer is optional for a module value: it says how the module runs
// ("plugin /usr/libexec/obol/x (pid 42, restarts 1)"), for obolctl status.
// A module without it is reported as "built-in".
type Describer interface {
	Describe() string
}
