package xfrm

import (
	"bytes"
	"fmt"
)

// SecCtx is the XFRMA_SEC_CTX attribute: a security context (label) on a
// policy, a state or an ACQUIRE. On the wire it is struct xfrm_user_sec_ctx
// (len, exttype, ctx_alg, ctx_doi, ctx_len) followed by ctx_len bytes of
// context.
type SecCtx struct {
	DOI     uint8  // domain of interpretation; 1 (XFRM_SC_DOI_LSM) is the only one
	Alg     uint8  // 1 (XFRM_SC_ALG_SELINUX) is the only one
	Context string // e.g. "system_u:object_r:ipsec_spd_t:s0", without the trailing NUL
}

// maxSecCtx is the longest context the kernel takes: SELinux refuses
// contexts of a page or more, NUL included.
const maxSecCtx = 4095 - 1

// MarshalSecCtx builds the XFRMA_SEC_CTX attribute payload. A zero DOI or
// Alg means LSM/SELinux, the only values the kernel accepts. The context is
// sent with a trailing NUL, as iproute2 and strongSwan do.
func MarshalSecCtx(c SecCtx) ([]byte, error) {
	if c.Context == "" {
		return nil, fmt.Errorf("xfrm: security context: empty; leave SecCtx unset for an unlabeled policy")
	}
	if i := bytes.IndexByte([]byte(c.Context), 0); i >= 0 {
		return nil, fmt.Errorf("xfrm: security context %q: NUL byte at %d; a context is one C string", c.Context, i)
	}
	if len(c.Context) > maxSecCtx {
		return nil, fmt.Errorf("xfrm: security context: %d bytes, the kernel takes at most %d", len(c.Context), maxSecCtx)
	}
	if c.DOI == 0 {
		c.DOI = SecCtxDOILSM
	}
	if c.Alg == 0 {
		c.Alg = SecCtxAlgSELinux
	}
	n := len(c.Context) + 1
	b := make([]byte, sizeofUserSecCtx, sizeofUserSecCtx+n)
	ne.PutUint16(b[0:], uint16(sizeofUserSecCtx+n))
	ne.PutUint16(b[2:], attrSecCtx)
	b[4] = c.Alg
	b[5] = c.DOI
	ne.PutUint16(b[6:], uint16(n))
	b = append(b, c.Context...)
	return append(b, 0), nil
}

// ParseSecCtx decodes an XFRMA_SEC_CTX attribute payload. It enforces the
// kernel's own rule (len == 8 + ctx_len, within the payload), drops the
// trailing NULs and refuses a context with a NUL inside.
func ParseSecCtx(b []byte) (SecCtx, error) { return parseSecCtx(b, 0) }

func parseSecCtx(b []byte, base int) (SecCtx, error) {
	d := dec{b: b, base: base, msg: "security context"}
	if err := d.need(0, sizeofUserSecCtx, "xfrm_user_sec_ctx"); err != nil {
		return SecCtx{}, err
	}
	l := int(ne.Uint16(b[0:]))
	n := int(ne.Uint16(b[6:]))
	if l != sizeofUserSecCtx+n {
		return SecCtx{}, d.bad(0, "xfrm_user_sec_ctx.len", "len %d is not 8 + ctx_len %d", l, n)
	}
	if err := d.need(sizeofUserSecCtx, n, "context string"); err != nil {
		return SecCtx{}, err
	}
	s := b[sizeofUserSecCtx : sizeofUserSecCtx+n]
	s = bytes.TrimRight(s, "\x00")
	if i := bytes.IndexByte(s, 0); i >= 0 {
		return SecCtx{}, d.bad(sizeofUserSecCtx+i, "context string", "NUL byte inside the context")
	}
	if len(s) == 0 {
		return SecCtx{}, d.bad(sizeofUserSecCtx, "context string", "empty context")
	}
	return SecCtx{Alg: b[4], DOI: b[5], Context: string(s)}, nil
}
