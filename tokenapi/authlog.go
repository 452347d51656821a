package tokenapi

import "strings"

// AuthLog pieces together authentication Evidence from charon's level-1
// log lines of one IKE_SA (vici log events carry the IKE_SA's unique id).
// Feed it the lines of one IKE_SA in order, from IKE_AUTH on; it stops at
// the peer's "authentication of 'ID' with METHOD successful" line, so
// later lines (CRL checks of other SAs, re-authentication) do not mix in.
// Start a new AuthLog for each re-authentication.
type AuthLog struct {
	Evidence Evidence
	// Done is set once the peer's success line was seen.
	Done bool
	// inStatus: between "checking certificate status" and its verdict
	// charon verifies CRL/OCSP signers, whose "using trusted certificate"
	// lines are not the peer's.
	inStatus bool
}

// Feed takes one log message (charon's text, leading spaces allowed).
func (l *AuthLog) Feed(msg string) {
	if l.Done {
		return
	}
	m := strings.TrimSpace(msg)
	switch {
	case strings.HasPrefix(m, "checking certificate status"):
		l.inStatus = true
	case strings.HasPrefix(m, "certificate status is"):
		l.inStatus = false
	case l.inStatus:
	case strings.HasPrefix(m, "using trusted ca certificate "):
		l.Evidence.TrustedCADN = quoted(m)
	case strings.HasPrefix(m, "using trusted certificate "):
		l.Evidence.TrustedCertDN = quoted(m)
	case strings.HasPrefix(m, "using certificate "):
		l.Evidence.PeerCertDN = quoted(m)
	case strings.HasPrefix(m, "fetching certificate from "):
		l.Evidence.Fetched = true
	case strings.HasPrefix(m, "authentication of '") && strings.HasSuffix(m, " successful"):
		rest := strings.TrimPrefix(m, "authentication of '")
		_, tail, ok := strings.Cut(rest, "' ")
		if !ok || strings.HasPrefix(tail, "(myself)") {
			return // our own authentication
		}
		if method, ok := strings.CutPrefix(tail, "with "); ok {
			l.Evidence.LogMethod = strings.TrimSuffix(method, " successful")
			l.Done = true
		}
	}
}

// quoted returns the text between the first and the last double quote.
func quoted(m string) string {
	i, j := strings.IndexByte(m, '"'), strings.LastIndexByte(m, '"')
	if i < 0 || j <= i {
		return ""
	}
	return m[i+1 : j]
}
