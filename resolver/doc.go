// Package resolver finds where and how to reach a peer with opportunistic
// encryption: the IPsec gateways and public keys its owner publishes in DNS
// (specs/opportunistic-encryption.txt, RFC 4025, RFC 9373). It implements
// plugins.Resolver.
//
// For a peer's address it asks, at the address's reverse-map name
// (in-addr.arpa or ip6.arpa), for
//
//   - TXT "X-IPsec-Server(P)=A.B.C.D KEY" and "X-IPsec-Server(P)=@FQDN KEY"
//     delegation records (KEY: an RFC 3110 RSA key in base64, optional);
//   - IPSECKEY records (RFC 4025: RSA, algorithm 2; Ed25519, algorithm 4);
//   - KEY records (RFC 2535, protocol IPsec or any): the peer's own key.
//
// For an @FQDN identity it asks the FQDN for IPSECKEY and KEY records. A
// gateway named without a key gets its keys from KEY records at its own
// reverse-map name or FQDN.
//
// All queries go to one trusted, validating resolver (e.g. a local unbound)
// with the DNSSEC OK bit set. Its AD bit makes an answer "secure"; a
// SERVFAIL that goes away with checking disabled (or an RFC 8914 DNSSEC
// error code) makes it "bogus"; anything else is "insecure". Bogus answers
// are never used; with Config.RequireDNSSEC insecure ones are not either.
//
// Answers are cached per question (name and type) for their TTL, clamped,
// negative answers for their SOA's negative TTL; the cache is bounded in
// entries and bytes. Concurrent lookups share queries, and every lookup has
// a deadline. Malformed records are skipped with a reason (Answer.Skipped)
// and never fail a lookup.
//
// Keys convert for charon with PEM, PKIX and KeyID.
package resolver
