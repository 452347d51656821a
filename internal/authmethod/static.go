package authmethod

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
)

// StaticDir is the static keys directory: the administrator keeps one file
// per peer, named by its address ("192.0.2.12", "2001:db8::12") or its FQDN
// ("hostb.example.org"), holding its keys:
//
//	# hostb, rolled over 2026-11
//	gateway 192.0.2.12          (optional: where IKE goes; default the peer)
//	ed25519 BASE64              (32 raw bytes)
//	rsa BASE64                  (RFC 3110 form, as in DNS)
//
// or, instead of keys, a pre-shared key both ends hold, or the CA whose
// certificate the peer proves its identity with:
//
//	psk BASE64                  (16 to 256 bytes)
//	ca corp-ca.pem              (PEM; a path relative to the directory)
//
// Credentials from it are worth PRESHAREDKEY: provided out of band for this
// one peer (a CA is worth what charon's log then says: PKIX). Files are
// read on each question, so edits apply at once.
type StaticDir struct{ Dir string }

// Credentials implements plugins.AuthMethod.
func (s StaticDir) Credentials(_ context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	name := strings.TrimSuffix(q.FQDN, ".")
	if q.Addr.IsValid() {
		name = q.Addr.Unmap().String()
	}
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") {
		return plugins.LookupAnswer{}, fmt.Errorf("static keys: %q cannot name a key file", name)
	}
	path := filepath.Join(s.Dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return plugins.LookupAnswer{Name: path}, nil // no opinion
	}
	if err != nil {
		return plugins.LookupAnswer{Name: path}, fmt.Errorf("static keys: %w; fix the file's permissions (obold reads it)", err)
	}
	gw, err := ParseKeyFile(b)
	if err != nil {
		return plugins.LookupAnswer{Name: path}, fmt.Errorf("static keys: %s:%w", path, err)
	}
	for i, ca := range gw.CACerts { // ParseKeyFile leaves the file's name
		der, err := readCA(filepath.Join(s.Dir, string(ca)))
		if err != nil {
			return plugins.LookupAnswer{Name: path}, fmt.Errorf("static keys: %s: %w", path, err)
		}
		gw.CACerts[i] = der
	}
	if !gw.Addr.IsValid() && gw.FQDN == "" {
		if q.Addr.IsValid() {
			gw.Addr = q.Addr.Unmap()
		} else {
			gw.FQDN = name
		}
	}
	method := plugins.MethodPresharedKey
	if len(gw.CACerts) > 0 {
		method = "" // the certificate's trust is charon's PKIX verdict
	}
	return plugins.LookupAnswer{Name: path, Gateways: []plugins.Gateway{gw}, Method: method}, nil
}

// readCA reads one PEM CA certificate.
func readCA(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ca: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("ca %s: no PEM CERTIFICATE in it", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("ca %s: %w", path, err)
	}
	if !c.IsCA {
		return nil, fmt.Errorf("ca %s (%s) is not a CA certificate", path, c.Subject)
	}
	return blk.Bytes, nil
}

// maxKeyFile bounds a key file: a few keys, not a database.
const maxKeyFile = 64 << 10

// ParseKeyFile reads a static key file (see StaticDir). Errors start with
// the line number: "LINE: what; what to write".
func ParseKeyFile(b []byte) (plugins.Gateway, error) {
	gw := plugins.Gateway{Precedence: 0, Source: "static"}
	if len(b) > maxKeyFile {
		return gw, fmt.Errorf("0: file of %d bytes, more than %d; keep one peer's keys in it", len(b), maxKeyFile)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxKeyFile)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return gw, fmt.Errorf("%d: %q: want two fields, e.g. \"ed25519 BASE64\" or \"gateway 192.0.2.12\"", n, line)
		}
		switch f[0] {
		case "gateway":
			if gw.Addr.IsValid() || gw.FQDN != "" {
				return gw, fmt.Errorf("%d: a second gateway line; one file names one gateway", n)
			}
			if fq, ok := strings.CutPrefix(f[1], "@"); ok && fq != "" && !strings.ContainsAny(fq, "/@") {
				gw.FQDN = strings.TrimSuffix(fq, ".")
				continue
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil {
				return gw, fmt.Errorf("%d: gateway %q is neither an address nor @FQDN", n, f[1])
			}
			gw.Addr = a.Unmap()
		case "psk":
			if len(gw.PSK) > 0 {
				return gw, fmt.Errorf("%d: a second psk line; one peer has one pre-shared key", n)
			}
			data, err := base64.StdEncoding.DecodeString(f[1])
			if err != nil {
				return gw, fmt.Errorf("%d: psk: not base64: %w", n, err)
			}
			if len(data) < 16 || len(data) > 256 {
				return gw, fmt.Errorf("%d: psk of %d bytes; write 16 to 256 random bytes in base64 (e.g. openssl rand -base64 32)", n, len(data))
			}
			gw.PSK = data
		case "ca":
			if strings.Contains(f[1], "..") {
				return gw, fmt.Errorf("%d: ca %q: name a file in the keys directory", n, f[1])
			}
			gw.CACerts = append(gw.CACerts, []byte(f[1])) // read by Credentials
		case "ed25519", "rsa":
			data, err := base64.StdEncoding.DecodeString(f[1])
			if err != nil {
				return gw, fmt.Errorf("%d: %s key: not base64: %w", n, f[0], err)
			}
			k := plugins.PublicKey{Algorithm: f[0], Data: data}
			if _, err := resolver.CryptoKey(k); err != nil { // what charon could not use
				return gw, fmt.Errorf("%d: %s key: %w", n, f[0], err)
			}
			gw.Keys = append(gw.Keys, k)
		default:
			return gw, fmt.Errorf("%d: unknown keyword %q; write gateway, ed25519, rsa, psk or ca", n, f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return gw, fmt.Errorf("%d: %w", n+1, err)
	}
	kinds := 0
	for _, has := range []bool{len(gw.Keys) > 0, len(gw.PSK) > 0, len(gw.CACerts) > 0} {
		if has {
			kinds++
		}
	}
	switch {
	case kinds == 0:
		return gw, errors.New("0: no key; write a line \"ed25519 BASE64\", \"rsa BASE64\", \"psk BASE64\" or \"ca FILE\"")
	case kinds > 1:
		return gw, errors.New("0: keys, psk and ca are alternatives; keep one kind per peer")
	}
	return gw, nil
}
