package plugins

import "context"

// TokenChangeSource is what a TokenHost also offers when it can tell the
// token API module that SAs changed (the module's events, PROTOCOL.md
// "Events and datagrams"). It is a separate interface so that hosts
// without a change stream (tests, older hosts) still satisfy TokenHost;
// the module checks for it with a type assertion.
type TokenChangeSource interface {
	// TokenChanges delivers changes until ctx ends, then closes the
	// channel. A change is sent after Generation has moved for it, so a
	// TokenSAs call made on receipt sees its effect. A receiver that falls
	// behind misses changes (the channel is bounded) and gets one
	// TokenChange with Kind TokenChangeLost instead.
	TokenChanges(ctx context.Context) <-chan TokenChange
}

// TokenChangeKind says what happened.
type TokenChangeKind string

// Change kinds.
const (
	TokenChangeUp          TokenChangeKind = "up"           // an IKE_SA or CHILD_SA came up
	TokenChangeDown        TokenChangeKind = "down"         // an IKE_SA or CHILD_SA went down
	TokenChangeRekeyed     TokenChangeKind = "rekeyed"      // a CHILD_SA (Child set) or IKE_SA was rekeyed
	TokenChangeRekeyFailed TokenChangeKind = "rekey-failed" // charon failed to rekey and will retry
	TokenChangeReset       TokenChangeKind = "reset"        // charon (re)connected or went away: anything may have changed
	TokenChangeLost        TokenChangeKind = "lost"         // the receiver fell behind and missed changes
)

// TokenChange is one change of the host's SAs, as plain data: names, never
// keys or SPIs.
type TokenChange struct {
	Kind    TokenChangeKind
	IKEName string // the conn, "" when unknown
	Child   string // the CHILD_SA's config name, "" for IKE_SA-wide changes
	Text    string // for people: charon's log line for a failed rekey
}
