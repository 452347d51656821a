package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/keyfile"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// desiredConn is a config conn made ready for charon: the VICI conn plus the
// secrets it needs, and a digest to notice changes on reload.
type desiredConn struct {
	conn   vici.Conn
	shared *vici.Shared
	key    *vici.Key
	digest [32]byte
}

// buildConn turns a [[conn]] into what obold loads into charon. Files are
// read here, so a reload picks up a rotated key. A child naming a label
// entry becomes one child per label the label policy admits.
func buildConn(ctx context.Context, prefix string, c config.Conn, lp plugins.LabelPolicy) (desiredConn, error) {
	name := prefix + string(c.Name)
	vc := vici.Conn{
		Name:      name,
		Version:   c.Version,
		Proposals: c.Proposals,
		DPDDelay:  time.Duration(c.DPDDelay),
	}
	for _, a := range c.LocalAddrs {
		vc.LocalAddrs = append(vc.LocalAddrs, string(a))
	}
	for _, a := range c.RemoteAddrs {
		vc.RemoteAddrs = append(vc.RemoteAddrs, string(a))
	}
	d := desiredConn{}
	local := vici.Auth{Auth: string(c.Local.Auth), ID: c.Local.ID}
	remote := vici.Auth{Auth: string(c.Remote.Auth), ID: c.Remote.ID}
	if c.Local.KeyFile != "" {
		b, err := os.ReadFile(c.Local.KeyFile)
		if err != nil {
			return d, fmt.Errorf("conn %s: read key_file: %w", c.Name, err)
		}
		d.key = &vici.Key{Type: "any", Data: b}
		pub, err := keyfile.PublicPEM(b)
		if err != nil {
			return d, fmt.Errorf("conn %s: key_file %s: %w", c.Name, c.Local.KeyFile, err)
		}
		local.Pubkeys = [][]byte{pub}
	}
	for _, f := range c.Remote.Pubkeys {
		b, err := os.ReadFile(f)
		if err != nil {
			return d, fmt.Errorf("conn %s: read pubkey: %w", c.Name, err)
		}
		remote.Pubkeys = append(remote.Pubkeys, b)
	}
	if c.PSKFile != "" {
		b, err := os.ReadFile(c.PSKFile)
		if err != nil {
			return d, fmt.Errorf("conn %s: read psk_file: %w", c.Name, err)
		}
		secret := trimNewline(b)
		if len(secret) == 0 {
			return d, fmt.Errorf("conn %s: psk_file %s is empty; put the pre-shared key in it", c.Name, c.PSKFile)
		}
		var owners []string
		for _, id := range []string{c.Local.ID, c.Remote.ID} {
			if id != "" {
				owners = append(owners, id)
			}
		}
		d.shared = &vici.Shared{ID: name, Type: "ike", Data: secret, Owners: owners}
	}
	vc.Local = []vici.Auth{local}
	vc.Remote = []vici.Auth{remote}
	for _, ch := range c.Children {
		if ch.LabelEntry != "" {
			children, err := labeledChildren(ctx, ch, lp)
			if err != nil {
				return d, fmt.Errorf("conn %s: child %s: %w", c.Name, ch.Name, err)
			}
			vc.Children = append(vc.Children, children...)
			continue
		}
		child := vici.Child{
			Name:         string(ch.Name),
			Mode:         string(ch.Mode),
			ESPProposals: ch.ESPProposals,
			StartAction:  string(ch.StartAction),
			Inactivity:   time.Duration(ch.Inactivity),
			Label:        ch.Label,
			LabelMode:    string(ch.LabelMode),
		}
		child.LocalTS = tsStrings(ch.LocalTS)
		child.RemoteTS = tsStrings(ch.RemoteTS)
		vc.Children = append(vc.Children, child)
	}
	d.conn = vc
	// Pubkeys are not in Conn's JSON form, so they are hashed on their own.
	d.digest = digestOf(vc, local.Pubkeys, remote.Pubkeys, d.shared, d.key)
	return d, nil
}

// labeledChildren expands a child that names a label entry: one charon
// child per admitted label, named as the policy names it (the same names
// obolctl labels check shows).
func labeledChildren(ctx context.Context, ch config.Child, lp plugins.LabelPolicy) ([]vici.Child, error) {
	if lp == nil {
		return nil, fmt.Errorf("label_entry %q needs the label policy module, which is not running", ch.LabelEntry)
	}
	lcs, err := lp.Children(ctx, ch.LabelEntry)
	if err != nil {
		return nil, err
	}
	var out []vici.Child
	for _, lc := range lcs {
		child := vici.Child{
			Name:         lc.Name,
			Mode:         string(ch.Mode),
			ESPProposals: ch.ESPProposals,
			StartAction:  string(ch.StartAction),
			Inactivity:   time.Duration(ch.Inactivity),
			Label:        lc.Label,
			LabelMode:    lc.LabelMode,
			LocalTS:      []string{lc.LocalTS},
			RemoteTS:     []string{lc.RemoteTS},
		}
		if len(ch.LocalTS) > 0 {
			child.LocalTS = tsStrings(ch.LocalTS)
		}
		if len(ch.RemoteTS) > 0 {
			child.RemoteTS = tsStrings(ch.RemoteTS)
		}
		out = append(out, child)
	}
	return out, nil
}

func tsStrings(ts []config.TrafficSelector) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = string(t)
	}
	return out
}

func digestOf(parts ...any) [32]byte {
	h := sha256.New()
	for _, p := range parts {
		b, _ := json.Marshal(p) // plain structs: cannot fail
		h.Write(b)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

func trimNewline(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}
