package plugins

import "context"

// AuthMethod decides how obold finds and trusts the credentials of a peer
// it has no configuration for (an opportunistic stranger): keys from DNS,
// a key remembered at first contact, a directory of keys the administrator
// keeps, or whatever a plugin author writes. obold asks its methods in the
// configured order; the first with an opinion decides.
type AuthMethod interface {
	// Credentials finds the gateways and raw public keys obold gives charon
	// for q's peer, and says in the answer's Method how they are trusted.
	// No gateways with a nil error and no Unusable means "no opinion": the
	// next method is asked. Unusable refuses the peer outright (no later
	// method may vouch for it).
	Credentials(ctx context.Context, q LookupQuery) (LookupAnswer, error)
}

// AuthMethodFunc adapts a function to AuthMethod.
type AuthMethodFunc func(ctx context.Context, q LookupQuery) (LookupAnswer, error)

// Credentials implements AuthMethod.
func (f AuthMethodFunc) Credentials(ctx context.Context, q LookupQuery) (LookupAnswer, error) {
	return f(ctx, q)
}

// The authenticationMethod names an answer's Method may carry (the token
// API's, btns-abstract-api §7, for keys obold gives charon).
const (
	MethodDNSSEC       = "DNSSEC"       // keys from DNSSEC-secure DNS
	MethodBTNS         = "BTNS"         // keys from DNS without validation
	MethodLeapOfFaith  = "LEAPOFFAITH"  // the key seen at first contact, remembered
	MethodPresharedKey = "PRESHAREDKEY" // a key the administrator provided for this peer
	MethodNone         = "NONE"         // nothing vouches for the key
)

// ValidMethod says whether m may appear in LookupAnswer.Method.
func ValidMethod(m string) bool {
	switch m {
	case "", MethodDNSSEC, MethodBTNS, MethodLeapOfFaith, MethodPresharedKey, MethodNone:
		return true
	}
	return false
}
