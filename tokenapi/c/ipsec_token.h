/*
 * ipsec_token.h - C client of obol's token API (tokenapi/PROTOCOL.md).
 *
 * An application hands obold one of its own connected sockets over a unix
 * SOCK_SEQPACKET socket (SCM_RIGHTS) and learns HOW the flow is protected
 * (pToken), WHO the authenticated peer is (iToken) and WHY a flow is not
 * protected. Names follow specs/btns-abstract-api.txt: ipsec_ for functions
 * and types, IPSEC_ for macros and enumerations.
 *
 * libc only, C99/C11, Linux.
 *
 * Thread safety: an ipsec_conn is NOT safe for concurrent use. Use one
 * connection per thread, or serialize all calls on a shared connection with
 * a mutex. Distinct connections are independent. ipsec_strerror,
 * ipsec_auth_method_name and ipsec_why_name are thread-safe (static strings).
 *
 * Lifetimes: a pToken lives on obold until ipsec_ptoken_release or until
 * its connection is closed (the connection is the pToken's scope). The
 * strings and bytes in an ipsec_ptoken / ipsec_itoken are owned by that
 * struct and valid until ipsec_ptoken_free / ipsec_itoken_free, whatever
 * happens to the connection.
 */
#ifndef IPSEC_TOKEN_H
#define IPSEC_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IPSEC_TOKEN_DEFAULT_SOCKET "/run/obol/token.sock"
#define IPSEC_TOKEN_DEFAULT_TIMEOUT_MS 5000
#define IPSEC_TOKEN_PROTOCOL_VERSION 1

/* Status codes. 0 is success; 1..14 are the protocol's ERROR_CODE values
 * (obold refused the request); 256 and up are this library's own. A server
 * may send a code this header does not know: it is returned as is. */
enum ipsec_status {
	IPSEC_OK = 0,
	IPSEC_E_BAD_MESSAGE = 1,          /* obold could not decode our request */
	IPSEC_E_UNSUPPORTED_VERSION = 2,
	IPSEC_E_UNKNOWN_TYPE = 3,
	IPSEC_E_NO_FD = 4,
	IPSEC_E_TOO_MANY_FDS = 5,
	IPSEC_E_NOT_SOCKET = 6,
	IPSEC_E_NOT_INET = 7,
	IPSEC_E_NOT_CONNECTED = 8,
	IPSEC_E_UNSUPPORTED_PROTOCOL = 9,
	IPSEC_E_UNKNOWN_HANDLE = 10,
	IPSEC_E_LIMIT = 11,
	IPSEC_E_UNAVAILABLE = 12,
	IPSEC_E_INTERNAL = 13,
	IPSEC_E_DENIED = 14,
	/* ipsec_protect (influence; PROTOCOL.md "Influence") */
	IPSEC_E_BAD_LEVEL = 20,  /* level is not an enum ipsec_level value obold knows */
	IPSEC_E_PIN_FAILED = 21, /* obold could not pin the socket: its traffic is NOT held back */
	/* 25..29: events and datagrams (PROTOCOL.md, "Events and datagrams") */
	IPSEC_E_ADDRESS_MISMATCH = 25, /* the datagram's local address is not the socket's */
	IPSEC_E_NO_EVENTS = 26,        /* this obold cannot send events */

	IPSEC_E_SYSTEM = 256,   /* a system call failed; errno says why */
	IPSEC_E_TIMEOUT = 257,  /* no reply within the timeout; errno EAGAIN */
	IPSEC_E_CLOSED = 258,   /* obold closed the connection */
	IPSEC_E_BAD_REPLY = 259, /* obold's reply is malformed or unexpected */
	IPSEC_E_INVALID = 260,  /* bad argument; errno EINVAL */
	IPSEC_E_OVERFLOW = 261  /* too many unread events piled up during a request */
};

/* authenticationMethod (AUTH_METHOD wire values). */
enum ipsec_auth_method {
	IPSEC_AUTH_NONE = 0,
	IPSEC_AUTH_BTNS = 1,
	IPSEC_AUTH_LEAPOFFAITH = 2,
	IPSEC_AUTH_PRESHAREDKEY = 3,
	IPSEC_AUTH_GROUPKEY = 4,
	IPSEC_AUTH_XAUTH = 5,
	IPSEC_AUTH_EAP = 6,
	IPSEC_AUTH_PKIX_TRUSTED = 7,
	IPSEC_AUTH_PKIX_INLINE = 8,
	IPSEC_AUTH_PKIX_OFFLINE = 9,
	IPSEC_AUTH_DNSSEC = 10
};

/* WHY a flow is not protected (WHY_CODE wire values). */
enum ipsec_why {
	IPSEC_WHY_NONE = 0, /* the flow is protected */
	IPSEC_WHY_NO_POLICY = 1,
	IPSEC_WHY_NO_SA = 2,
	IPSEC_WHY_NEGOTIATION_FAILED = 3,
	IPSEC_WHY_AUTH_FAILED = 4,
	IPSEC_WHY_LABEL_DENIED = 5,
	IPSEC_WHY_OE_NO_RECORDS = 6,
	IPSEC_WHY_OE_UNUSABLE = 7,
	IPSEC_WHY_LOCAL = 8,
	IPSEC_WHY_BLOCKED = 9,
	IPSEC_WHY_UNKNOWN = 10,
	/* refusals of ipsec_protect */
	IPSEC_WHY_PEER_MISMATCH = 20, /* the SA's authenticated peer is not the identity asked for */
	IPSEC_WHY_DENIED = 21,        /* asking for less than policy needs CAP_NET_ADMIN or a lower_groups group */
	IPSEC_WHY_POLICY_WINS = 22,   /* private, block or a configured tunnel: nobody can lower it */
	IPSEC_WHY_DNS_TIMEOUT = 23,   /* opportunistic: the DNS lookup for the peer timed out */
	IPSEC_WHY_INSUFFICIENT = 24,  /* an SA covers the flow but gives less than asked */
	/* Several CHILD_SAs with different labels cover the flow and the
	 * socket's own label is unknown: no label is claimed. May come with a
	 * protected flow. */
	IPSEC_WHY_LABEL_UNKNOWN = 25
};

/* What happened to a subscribed flow (EVENT_KIND wire values). */
enum ipsec_event_kind {
	IPSEC_EVENT_UP = 1,                 /* an SA now covers the flow */
	IPSEC_EVENT_DOWN = 2,               /* no SA covers it any more */
	IPSEC_EVENT_REKEYED = 3,            /* the CHILD_SA was rekeyed, same peer */
	IPSEC_EVENT_REKEY_FAILED = 4,       /* charon failed to rekey, will retry */
	IPSEC_EVENT_IDENTITY_CHANGED = 5,   /* the flow's iToken changed */
	IPSEC_EVENT_PROTECTION_CHANGED = 6  /* privacy, integrity, compression or label changed */
};

/* What ipsec_protect asks for, and what was granted. */
enum ipsec_level {
	IPSEC_LEVEL_NONE = 0,       /* granted: nothing (refused) */
	IPSEC_LEVEL_ENCRYPTION = 1, /* privacy and integrity, an authenticated peer */
	IPSEC_LEVEL_INTEGRITY = 2,  /* at least integrity */
	IPSEC_LEVEL_BTNS = 3,       /* privacy and integrity, an unauthenticated peer is fine */
	IPSEC_LEVEL_CLEAR = 4       /* no IPsec for this socket: less than policy, needs privilege */
};

/* How obold fixed the socket after ipsec_protect. */
enum ipsec_pin {
	IPSEC_PIN_NONE = 0,
	IPSEC_PIN_DEVICE = 1, /* bound to charon's TUN device (userspace ESP) */
	IPSEC_PIN_XFRM = 2,   /* per-socket XFRM policies requiring ESP (kernel ESP) */
	IPSEC_PIN_BYPASS = 3  /* per-socket XFRM bypass: the socket stays clear (CLEAR granted) */
};

/* A pToken handle names a pToken on one connection only (from 1). */
typedef uint64_t ipsec_ptoken_handle;
/* An iToken handle names a peer on this host while obold runs; 0 = none. */
typedef uint64_t ipsec_itoken_handle;

/* One connection to obold: the scope of its pTokens. Opaque. */
typedef struct ipsec_conn ipsec_conn;

/* HOW a socket's flow is protected. String members are never NULL ("" when
 * absent), NUL-terminated UTF-8 without embedded NUL. */
typedef struct ipsec_ptoken {
	ipsec_ptoken_handle handle;
	ipsec_itoken_handle itoken;  /* 0: no authenticated peer */
	bool is_protected;           /* an SA covers the flow (may lack privacy) */
	bool privacy_protected;      /* privacyProtected */
	bool integrity_protected;    /* integrityProtected */
	bool compression_available;  /* compressionAvailable */
	int why;                     /* enum ipsec_why; IPSEC_WHY_NONE if protected */
	const char *why_text;        /* why, for people */
	const char *audit;           /* auditString; no structure may be assumed */
	const char *label;           /* the SA's security label */
	void *mem_;                  /* private: storage of the strings */
} ipsec_ptoken;

/* WHO the peer is. String members are never NULL ("" when absent). */
typedef struct ipsec_itoken {
	ipsec_itoken_handle handle;
	int auth_method;               /* enum ipsec_auth_method (or a newer value) */
	const char *remote_id;         /* the peer's IKE identity */
	const char *cert_dn;           /* certificateDN */
	const char *ca_dn;             /* certificateAuthorityDN */
	const char *pubkey_id;         /* pubKeyID: 9 base64 characters */
	const char *audit;             /* auditString */
	const unsigned char *channel_binding; /* NULL when absent */
	size_t channel_binding_len;
	void *mem_;                    /* private: storage */
} ipsec_itoken;

/* The answer to ipsec_protect. Strings are never NULL ("" when absent). */
typedef struct ipsec_grant {
	int granted;           /* enum ipsec_level in force; IPSEC_LEVEL_NONE: refused */
	int why;               /* enum ipsec_why: why refused; IPSEC_WHY_NONE when granted */
	const char *why_text;  /* the same for people */
	int pin;               /* enum ipsec_pin */
	const char *pin_iface; /* the device with IPSEC_PIN_DEVICE */
	const char *peer_id;   /* the authenticated peer's IKE identity ("" when clear) */
	ipsec_ptoken ptoken;   /* the flow's pToken after the action (a live pToken) */
	void *mem_;            /* private: storage */
} ipsec_grant;

/*
 * Connects to obold's token API socket (NULL: IPSEC_TOKEN_DEFAULT_SOCKET).
 * Receive and send timeouts are IPSEC_TOKEN_DEFAULT_TIMEOUT_MS. Returns NULL
 * with errno set on failure (ENOENT/ECONNREFUSED: obold is not running with
 * [tokenapi] enabled; ENAMETOOLONG: path too long; EINVAL: empty path).
 */
ipsec_conn *ipsec_token_open(const char *socket_path);

/* Closes the connection; obold frees all its pTokens. NULL is a no-op.
 * errno is preserved. */
void ipsec_token_close(ipsec_conn *conn);

/* Sets the per-request timeout (SO_RCVTIMEO and SO_SNDTIMEO); 0 waits
 * forever. Returns IPSEC_OK, IPSEC_E_INVALID or IPSEC_E_SYSTEM. */
int ipsec_token_set_timeout(ipsec_conn *conn, unsigned int timeout_ms);

/*
 * All request functions below return IPSEC_OK or a status code, and keep
 * the last status, errno and a text on the connection:
 *   - IPSEC_E_SYSTEM / IPSEC_E_TIMEOUT: errno is set to the failing call's
 *     errno when the function returns (and kept in ipsec_token_errno);
 *   - a protocol code: ipsec_token_errtext is obold's ERROR_TEXT;
 *   - IPSEC_E_BAD_REPLY: ipsec_token_errtext says what was wrong.
 * On failure *out is zeroed (and needs no free).
 */

/* PTOKEN_QUERY: passes sockfd (a connected TCP, UDP or SCTP socket) to obold
 * with SCM_RIGHTS; obold reads its addresses and closes its copy. sockfd
 * stays open and usable in the caller. Free *out with ipsec_ptoken_free. */
int ipsec_ptoken_get(ipsec_conn *conn, int sockfd, ipsec_ptoken *out);

/* PTOKEN_GET: the same pToken again, by handle. */
int ipsec_ptoken_lookup(ipsec_conn *conn, ipsec_ptoken_handle handle, ipsec_ptoken *out);

/* PTOKEN_RELEASE: frees the pToken on obold (the handle is never reused on
 * this connection). Does not free local memory: see ipsec_ptoken_free. */
int ipsec_ptoken_release(ipsec_conn *conn, ipsec_ptoken_handle handle);

/* ITOKEN_GET: the peer behind an iToken that one of this connection's live
 * pTokens carries (else IPSEC_E_UNKNOWN_HANDLE). Free with ipsec_itoken_free. */
int ipsec_itoken_get(ipsec_conn *conn, ipsec_itoken_handle handle, ipsec_itoken *out);

/*
 * Per-datagram pTokens for UDP sockets.
 *
 * ipsec_recvfrom_ptoken reads one datagram from sockfd like recvfrom(2)
 * (flags as for recvmsg; *received is its length, from/fromlen may be NULL)
 * and asks obold for the pToken of its sender (PTOKEN_QUERY_FROM). It turns
 * on IP_PKTINFO / IPV6_RECVPKTINFO on sockfd so that it learns each
 * datagram's destination address, which obold needs when sockfd is bound to
 * the wildcard address. On a request failure the datagram has still been
 * read: *received and from are set.
 *
 * ipsec_ptoken_get_from is the request alone: from is the sender, local the
 * datagram's destination address (NULL when sockfd is bound to one address).
 */
int ipsec_recvfrom_ptoken(ipsec_conn *conn, int sockfd, void *buf, size_t len, int flags, size_t *received,
			  struct sockaddr *from, socklen_t *fromlen, ipsec_ptoken *out);
int ipsec_ptoken_get_from(ipsec_conn *conn, int sockfd, const struct sockaddr *from, socklen_t fromlen,
			  const struct sockaddr *local, socklen_t locallen, ipsec_ptoken *out);

/*
 * Events. Use a connection of its own for subscriptions: obold pushes
 * events on it whenever they happen.
 *
 * ipsec_subscribe passes sockfd (a connected socket, as for
 * ipsec_ptoken_get; obold closes its copy at once and keeps only the flow)
 * and returns the subscription's id and, when now is not NULL, the flow's
 * state now (now->handle is 0: a subscription makes no pToken). Free *now
 * with ipsec_ptoken_free. ITOKEN_GET on this connection answers for the
 * iTokens its subscriptions currently carry.
 *
 * ipsec_event_next returns the next event, waiting up to the connection's
 * timeout (IPSEC_E_TIMEOUT when none came). To wait with poll(2), poll
 * ipsec_token_fd for POLLIN, but call ipsec_event_pending first: events
 * that arrived while a request waited for its reply are held in memory.
 * obold drops a connection whose events are not read (IPSEC_E_CLOSED).
 */
typedef uint64_t ipsec_subscription;

typedef struct ipsec_event {
	ipsec_subscription subscription;
	int kind;            /* enum ipsec_event_kind (or a newer value) */
	ipsec_ptoken state;  /* the flow now; state.handle is 0 */
} ipsec_event;

int ipsec_subscribe(ipsec_conn *conn, int sockfd, ipsec_subscription *id, ipsec_ptoken *now);
int ipsec_unsubscribe(ipsec_conn *conn, ipsec_subscription id);
int ipsec_event_next(ipsec_conn *conn, ipsec_event *out);
bool ipsec_event_pending(const ipsec_conn *conn);
int ipsec_token_fd(const ipsec_conn *conn);
void ipsec_event_free(ipsec_event *ev);
/* "UP", "REKEYED", ...; NULL for an unknown value. */
const char *ipsec_event_kind_name(int kind);

/* Free local memory of a token and zero it. NULL and zeroed structs are fine. */
void ipsec_ptoken_free(ipsec_ptoken *pt);
void ipsec_itoken_free(ipsec_itoken *it);

/* The last request's status, errno (0 unless IPSEC_E_SYSTEM/TIMEOUT) and
 * text ("" after success). The text is valid until the next call on conn. */
int ipsec_token_errcode(const ipsec_conn *conn);
int ipsec_token_errno(const ipsec_conn *conn);
const char *ipsec_token_errtext(const ipsec_conn *conn);

/* "IPSEC_E_UNKNOWN_HANDLE: ..." style description of a status code. Never
 * NULL; unknown codes give "unknown token API error". */
const char *ipsec_strerror(int code);
/* The protocol's name of a status code ("UNKNOWN_HANDLE", "SYSTEM", ...), or
 * NULL when unknown. */
const char *ipsec_status_name(int code);
/* "DNSSEC", "PKIX_INLINE", ...; NULL for an unknown value. */
const char *ipsec_auth_method_name(int method);
/* "NO_SA", ...; "NONE" for 0; NULL for an unknown value. */
const char *ipsec_why_name(int why);

/*
 * Asks obold to protect the flow of sockfd (a connected TCP, UDP or SCTP
 * socket the caller holds) at level (enum ipsec_level), from the peer whose
 * IKE identity is peer_id (NULL or "": any peer). obold reuses an SA or
 * brings one up (opportunistic encryption, or a configured conn), and pins
 * the socket: bound to charon's TUN device or given per-socket XFRM
 * policies, so its traffic never leaves unprotected, also after the SA goes
 * away. A refused request (out->granted == IPSEC_LEVEL_NONE, out->why says
 * why) is pinned too, unless IPSEC_LEVEL_CLEAR was asked and granted.
 * IPSEC_LEVEL_CLEAR needs CAP_NET_ADMIN or a tokenapi.lower_groups group;
 * private, block and configured tunnels refuse it for everyone.
 * Returns IPSEC_OK when obold answered (granted or refused); an error
 * status means the socket was not changed, except IPSEC_E_PIN_FAILED (close
 * it) and IPSEC_E_UNAVAILABLE for a protection level (it is pinned first,
 * so it stays pinned; ipsec_token_errtext says so).
 * An IKE negotiation may run: raise ipsec_token_set_timeout (e.g. 30000)
 * first. Free *out with ipsec_grant_free (also after an error).
 */
int ipsec_protect(ipsec_conn *conn, int sockfd, int level, const char *peer_id, ipsec_grant *out);

/* Frees a grant's storage (not its pToken on obold); NULL is a no-op. */
void ipsec_grant_free(ipsec_grant *grant);

/* Names of levels and pins ("ENCRYPTION", "DEVICE"), or NULL when unknown. */
const char *ipsec_level_name(int level);
const char *ipsec_pin_name(int pin);

#ifdef __cplusplus
}
#endif
#endif /* IPSEC_TOKEN_H */
