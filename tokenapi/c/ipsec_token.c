/*
 * ipsec_token.c - C client of obol's token API. See ipsec_token.h and
 * tokenapi/PROTOCOL.md (the wire format); tokenapi/wire is the reference.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* MSG_CMSG_CLOEXEC, SOCK_CLOEXEC */
#endif
#include "ipsec_token.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <unistd.h>

/* Wire constants (tokenapi/wire/wire.go). */
#define MAGIC 0x4F42544Bu
#define HEADER_LEN 16u
#define MAX_MESSAGE 65536u
#define MAX_ATTRS 64u
#define MAX_STRING 4096u
#define MAX_BLOB 8192u

enum {
	T_PTOKEN_QUERY = 0x01,
	T_PTOKEN_GET = 0x02,
	T_PTOKEN_RELEASE = 0x03,
	T_ITOKEN_GET = 0x04,
	T_PROTECT = 0x05,
	T_PTOKEN_REPLY = 0x81,
	T_OK = 0x83,
	T_ITOKEN_REPLY = 0x84,
	T_PROTECT_REPLY = 0x85,
	/* events and datagrams */
	T_SUBSCRIBE = 0x06,
	T_UNSUBSCRIBE = 0x07,
	T_PTOKEN_QUERY_FROM = 0x08,
	T_SUBSCRIBED = 0x86,
	T_EVENT = 0x87,
	T_ERROR = 0xFF
};

enum {
	A_PTOKEN = 1, A_ITOKEN = 2, A_PROTECTED = 3, A_PRIVACY = 4,
	A_INTEGRITY = 5, A_COMPRESSION = 6, A_AUDIT = 7, A_WHY_CODE = 8,
	A_WHY_TEXT = 9, A_AUTH_METHOD = 10, A_CERT_DN = 11, A_CA_DN = 12,
	A_PUBKEY_ID = 13, A_CHANNEL_BINDING = 14, A_LABEL = 15,
	A_REMOTE_ID = 16, A_ERROR_CODE = 17, A_ERROR_TEXT = 18,
	A_MAX_VERSION = 19,
	/* influence */
	A_REQUIRE = 20, A_PEER_ID = 21, A_GRANTED = 22, A_PIN = 23, A_PIN_IFACE = 24,
	/* events and datagrams */
	A_SUBSCRIPTION = 30, A_EVENT_KIND = 31, A_PEER_ADDR = 32, A_PEER_PORT = 33,
	A_LOCAL_ADDR = 34,
	A_KNOWN_MAX = 34,
	A_CRITICAL = 0x8000
};

enum kind { K_NONE, K_U8, K_BOOL, K_U16, K_U64, K_STRING, K_BLOB, K_ADDR };

static const unsigned char attr_kind[A_KNOWN_MAX + 1] = {
	[A_PTOKEN] = K_U64, [A_ITOKEN] = K_U64,
	[A_PROTECTED] = K_BOOL, [A_PRIVACY] = K_BOOL, [A_INTEGRITY] = K_BOOL,
	[A_COMPRESSION] = K_BOOL, [A_AUDIT] = K_STRING, [A_WHY_CODE] = K_U16,
	[A_WHY_TEXT] = K_STRING, [A_AUTH_METHOD] = K_U8, [A_CERT_DN] = K_STRING,
	[A_CA_DN] = K_STRING, [A_PUBKEY_ID] = K_STRING,
	[A_CHANNEL_BINDING] = K_BLOB, [A_LABEL] = K_STRING,
	[A_REMOTE_ID] = K_STRING, [A_ERROR_CODE] = K_U16,
	[A_ERROR_TEXT] = K_STRING, [A_MAX_VERSION] = K_U8,
	[A_REQUIRE] = K_U8, [A_PEER_ID] = K_STRING, [A_GRANTED] = K_U8,
	[A_PIN] = K_U8, [A_PIN_IFACE] = K_STRING,
	[A_SUBSCRIPTION] = K_U64, [A_EVENT_KIND] = K_U8, [A_PEER_ADDR] = K_ADDR,
	[A_PEER_PORT] = K_U16, [A_LOCAL_ADDR] = K_ADDR,
};

/* Events that arrive while a request waits for its reply are kept, in
 * order, up to this many; beyond, the request fails with IPSEC_E_OVERFLOW. */
#define MAX_QUEUED_EVENTS 1024u

struct queued_event {
	struct queued_event *next;
	size_t len;
	unsigned char data[];
};

#define ERRTEXT_MAX (MAX_STRING + 128u)

struct ipsec_conn {
	int fd;
	uint32_t next_id;
	int last_code;
	int last_errno;
	char errtext[ERRTEXT_MAX];
	struct queued_event *evq_head, *evq_tail;
	size_t evq_len;
	unsigned char buf[MAX_MESSAGE + 1]; /* +1 detects an oversized datagram */
};

/* A decoded reply: the first value of each known attribute (critical bit
 * ignored), pointing into conn->buf. */
struct attr {
	bool present;
	const unsigned char *val;
	size_t len;
};

struct reply {
	uint8_t type;
	uint32_t id;
	struct attr a[A_KNOWN_MAX + 1];
};

/* ---- big-endian helpers ---- */

static uint16_t get16(const unsigned char *p)
{
	return (uint16_t)(((unsigned)p[0] << 8) | (unsigned)p[1]);
}

static uint32_t get32(const unsigned char *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	       ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static uint64_t get64(const unsigned char *p)
{
	return ((uint64_t)get32(p) << 32) | (uint64_t)get32(p + 4);
}

static void put16(unsigned char *p, uint16_t v)
{
	p[0] = (unsigned char)(v >> 8);
	p[1] = (unsigned char)v;
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static void put64(unsigned char *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

/* ---- errors ---- */

static int fail(ipsec_conn *c, int code, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* fail records a status on c and returns it; err is restored into errno. */
static int fail(ipsec_conn *c, int code, int err, const char *fmt, ...)
{
	c->last_code = code;
	c->last_errno = err;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(c->errtext, sizeof c->errtext, fmt, ap);
	va_end(ap);
	if (n < 0)
		c->errtext[0] = '\0';
	if (err != 0)
		errno = err;
	return code;
}

static int sys_fail(ipsec_conn *c, const char *what)
{
	int err = errno;
	if (err == EAGAIN || err == EWOULDBLOCK)
		return fail(c, IPSEC_E_TIMEOUT, err, "token API: %s: timed out", what);
	return fail(c, IPSEC_E_SYSTEM, err, "token API: %s: %s", what, strerror(err));
}

static int ok(ipsec_conn *c)
{
	c->last_code = IPSEC_OK;
	c->last_errno = 0;
	c->errtext[0] = '\0';
	return IPSEC_OK;
}

/* ---- connection ---- */

ipsec_conn *ipsec_token_open(const char *socket_path)
{
	if (socket_path == NULL)
		socket_path = IPSEC_TOKEN_DEFAULT_SOCKET;
	struct sockaddr_un sun;
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	size_t plen = strlen(socket_path);
	if (plen == 0) {
		errno = EINVAL;
		return NULL;
	}
	if (plen >= sizeof sun.sun_path) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	memcpy(sun.sun_path, socket_path, plen + 1);

	ipsec_conn *c = calloc(1, sizeof *c);
	if (c == NULL)
		return NULL; /* errno ENOMEM */
	c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		int err = errno;
		free(c);
		errno = err;
		return NULL;
	}
	if (ipsec_token_set_timeout(c, IPSEC_TOKEN_DEFAULT_TIMEOUT_MS) != IPSEC_OK) {
		int err = errno;
		ipsec_token_close(c);
		errno = err;
		return NULL;
	}
	int r;
	do {
		r = connect(c->fd, (const struct sockaddr *)&sun, (socklen_t)sizeof sun);
	} while (r < 0 && errno == EINTR);
	if (r < 0) {
		int err = errno;
		ipsec_token_close(c);
		errno = err;
		return NULL;
	}
	return c;
}

void ipsec_token_close(ipsec_conn *conn)
{
	if (conn == NULL)
		return;
	int err = errno;
	if (conn->fd >= 0)
		close(conn->fd);
	while (conn->evq_head != NULL) {
		struct queued_event *q = conn->evq_head;
		conn->evq_head = q->next;
		free(q);
	}
	free(conn);
	errno = err;
}

int ipsec_token_set_timeout(ipsec_conn *conn, unsigned int timeout_ms)
{
	if (conn == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct timeval tv;
	tv.tv_sec = (time_t)(timeout_ms / 1000u);
	tv.tv_usec = (suseconds_t)((timeout_ms % 1000u) * 1000u);
	if (setsockopt(conn->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0 ||
	    setsockopt(conn->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) < 0)
		return sys_fail(conn, "setsockopt timeout");
	return ok(conn);
}

int ipsec_token_errcode(const ipsec_conn *conn) { return conn ? conn->last_code : IPSEC_E_INVALID; }
int ipsec_token_errno(const ipsec_conn *conn) { return conn ? conn->last_errno : EINVAL; }
const char *ipsec_token_errtext(const ipsec_conn *conn) { return conn ? conn->errtext : ""; }

/* ---- decoding ---- */

/* utf8_valid accepts exactly what Go's utf8.Valid accepts: no overlong
 * forms, no surrogates, nothing above U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char b = s[i];
		if (b < 0x80) {
			i++;
			continue;
		}
		size_t need;
		unsigned char lo = 0x80, hi = 0xBF;
		if (b >= 0xC2 && b <= 0xDF) {
			need = 1;
		} else if (b >= 0xE0 && b <= 0xEF) {
			need = 2;
			if (b == 0xE0)
				lo = 0xA0;
			else if (b == 0xED)
				hi = 0x9F;
		} else if (b >= 0xF0 && b <= 0xF4) {
			need = 3;
			if (b == 0xF0)
				lo = 0x90;
			else if (b == 0xF4)
				hi = 0x8F;
		} else {
			return false;
		}
		if (n - i - 1 < need)
			return false;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t k = 2; k <= need; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return false;
		i += need + 1;
	}
	return true;
}

/* decode checks the whole datagram buf[0:n] strictly and fills r. */
static int decode(ipsec_conn *c, size_t n, struct reply *r)
{
	const unsigned char *b = c->buf;
	memset(r, 0, sizeof *r);
	if (n < HEADER_LEN)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: %zu bytes, shorter than the header", n);
	if (n > MAX_MESSAGE)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: longer than %u bytes", MAX_MESSAGE);
	if (get32(b) != MAGIC)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: magic 0x%08x", (unsigned)get32(b));
	if (b[4] != IPSEC_TOKEN_PROTOCOL_VERSION)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: version %u", (unsigned)b[4]);
	if (get16(b + 6) != 0)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: flags 0x%04x", (unsigned)get16(b + 6));
	if ((uint64_t)get32(b + 12) != (uint64_t)(n - HEADER_LEN))
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: body length %u, %zu bytes follow",
			    (unsigned)get32(b + 12), n - HEADER_LEN);
	r->type = b[5];
	r->id = get32(b + 8);

	size_t off = HEADER_LEN, count = 0;
	while (off < n) {
		if (count == MAX_ATTRS)
			return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: more than %u attributes", MAX_ATTRS);
		count++;
		if (n - off < 4)
			return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: %zu trailing bytes", n - off);
		uint16_t t = get16(b + off);
		size_t len = get16(b + off + 2);
		off += 4;
		if (n - off < len)
			return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u says %zu bytes, %zu left",
				    (unsigned)t, len, n - off);
		const unsigned char *v = b + off;
		off += len;
		unsigned base = (unsigned)t & ~(unsigned)A_CRITICAL;
		enum kind k = base <= A_KNOWN_MAX ? (enum kind)attr_kind[base] : K_NONE;
		if (k == K_NONE) {
			if (t & A_CRITICAL)
				return fail(c, IPSEC_E_BAD_REPLY, 0,
					    "token API: bad reply: unknown critical attribute 0x%04x", (unsigned)t);
			continue; /* unknown, not critical: skipped */
		}
		switch (k) {
		case K_STRING:
			if (len > MAX_STRING)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: string of %zu bytes",
					    base, len);
			if (memchr(v, 0, len) != NULL)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: string contains NUL", base);
			if (!utf8_valid(v, len))
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: string is not UTF-8", base);
			break;
		case K_ADDR:
			if (len != 4 && len != 16)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: address of %zu bytes",
					    base, len);
			break;
		case K_BLOB:
			if (len > MAX_BLOB)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: %zu bytes", base, len);
			break;
		default: {
			size_t want = k == K_U16 ? 2 : k == K_U64 ? 8 : 1;
			if (len != want)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: %zu bytes, want %zu",
					    base, len, want);
			if (k == K_BOOL && v[0] > 1)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: attribute %u: boolean %u",
					    base, (unsigned)v[0]);
		}
		}
		if (!r->a[base].present) { /* the first of a type counts */
			r->a[base].present = true;
			r->a[base].val = v;
			r->a[base].len = len;
		}
	}
	return IPSEC_OK;
}

static uint64_t a_u64(const struct reply *r, int t) { return r->a[t].present ? get64(r->a[t].val) : 0; }
static unsigned a_u16(const struct reply *r, int t) { return r->a[t].present ? get16(r->a[t].val) : 0; }
static unsigned a_u8(const struct reply *r, int t) { return r->a[t].present ? r->a[t].val[0] : 0; }
static bool a_bool(const struct reply *r, int t) { return r->a[t].present && r->a[t].val[0] == 1; }

/* ---- round trip ---- */

/* recv_one reads one datagram into c->buf and decodes it into r. */
static int recv_one(ipsec_conn *c, struct reply *r, size_t *len)
{
	union {
		char buf[CMSG_SPACE(4 * sizeof(int))];
		struct cmsghdr align;
	} rcm;
	struct iovec riov = { .iov_base = c->buf, .iov_len = sizeof c->buf };
	struct msghdr rh;
	memset(&rh, 0, sizeof rh);
	rh.msg_iov = &riov;
	rh.msg_iovlen = 1;
	rh.msg_control = rcm.buf;
	rh.msg_controllen = sizeof rcm.buf;
	ssize_t n;
	do {
		n = recvmsg(c->fd, &rh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return sys_fail(c, "read reply");
	/* obold never sends descriptors; close any so none leak. */
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&rh); h != NULL; h = CMSG_NXTHDR(&rh, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS || h->cmsg_len < CMSG_LEN(0))
			continue;
		size_t nfd = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nfd; i++) {
			int rfd;
			memcpy(&rfd, CMSG_DATA(h) + i * sizeof(int), sizeof rfd);
			close(rfd);
		}
	}
	if (n == 0)
		return fail(c, IPSEC_E_CLOSED, 0, "token API: obold closed the connection");
	if (rh.msg_flags & MSG_TRUNC)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: longer than %u bytes", MAX_MESSAGE);
	*len = (size_t)n;
	return decode(c, (size_t)n, r);
}

/* queue_event keeps the event in c->buf[0:n] for ipsec_event_next. */
static int queue_event(ipsec_conn *c, size_t n)
{
	if (c->evq_len >= MAX_QUEUED_EVENTS)
		return fail(c, IPSEC_E_OVERFLOW, 0, "token API: more than %u events arrived unread during a request; read them with ipsec_event_next",
			    MAX_QUEUED_EVENTS);
	struct queued_event *q = malloc(sizeof *q + n);
	if (q == NULL)
		return fail(c, IPSEC_E_SYSTEM, ENOMEM, "token API: out of memory");
	q->next = NULL;
	q->len = n;
	memcpy(q->data, c->buf, n);
	if (c->evq_tail != NULL)
		c->evq_tail->next = q;
	else
		c->evq_head = q;
	c->evq_tail = q;
	c->evq_len++;
	return IPSEC_OK;
}

/* The longest request body: PROTECT's REQUIRE and a PEER_ID string
 * (PTOKEN_QUERY_FROM's two addresses and a port are shorter). */
#define MAX_REQUEST_BODY (4u + 1u + 4u + MAX_STRING)

/* roundtrip_body sends one request with body (bodylen bytes of attributes) and,
 * when fd >= 0, the descriptor in SCM_RIGHTS; it reads the reply to it,
 * skipping late replies to earlier abandoned requests and queueing events,
 * and checks its type. */
static int roundtrip_body(ipsec_conn *c, uint8_t type, const unsigned char *body, size_t bodylen, int fd,
			  uint8_t want, struct reply *r)
{
	unsigned char req[HEADER_LEN + MAX_REQUEST_BODY];
	if (bodylen > MAX_REQUEST_BODY)
		return fail(c, IPSEC_E_INVALID, EINVAL, "token API: request body of %zu bytes is too long", bodylen);
	size_t len = HEADER_LEN + bodylen;
	c->next_id++;
	if (c->next_id == 0) /* 0 means "not an answer"; never use it */
		c->next_id = 1;
	uint32_t id = c->next_id;
	put32(req, MAGIC);
	req[4] = IPSEC_TOKEN_PROTOCOL_VERSION;
	req[5] = type;
	put16(req + 6, 0);
	put32(req + 8, id);
	put32(req + 12, (uint32_t)bodylen);
	if (bodylen > 0)
		memcpy(req + HEADER_LEN, body, bodylen);

	struct iovec iov = { .iov_base = req, .iov_len = len };
	struct msghdr mh;
	memset(&mh, 0, sizeof mh);
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} cm;
	if (fd >= 0) {
		memset(&cm, 0, sizeof cm);
		mh.msg_control = cm.buf;
		mh.msg_controllen = sizeof cm.buf;
		struct cmsghdr *h = CMSG_FIRSTHDR(&mh);
		h->cmsg_level = SOL_SOCKET;
		h->cmsg_type = SCM_RIGHTS;
		h->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(h), &fd, sizeof fd);
	}
	ssize_t s;
	do {
		s = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
	} while (s < 0 && errno == EINTR);
	if (s < 0)
		return sys_fail(c, "send request");
	if ((size_t)s != len)
		return fail(c, IPSEC_E_SYSTEM, EMSGSIZE, "token API: short send");

	for (;;) {
		size_t n;
		int rc = recv_one(c, r, &n);
		if (rc != IPSEC_OK)
			return rc;
		if (r->type == T_EVENT && r->id == 0) {
			if ((rc = queue_event(c, n)) != IPSEC_OK)
				return rc;
			continue;
		}
		if (r->id != id && r->id != 0)
			continue; /* a late reply to an abandoned request */
		if (r->type == T_ERROR) {
			unsigned code = a_u16(r, A_ERROR_CODE);
			if (code == 0)
				return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: ERROR without ERROR_CODE");
			const struct attr *t = &r->a[A_ERROR_TEXT];
			return fail(c, (int)code, 0, "%.*s", t->present ? (int)t->len : 0,
				    t->present ? (const char *)t->val : "");
		}
		if (r->id == 0)
			return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: type 0x%02x with id 0", (unsigned)r->type);
		if (r->type != want)
			return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: type 0x%02x, want 0x%02x",
				    (unsigned)r->type, (unsigned)want);
		return IPSEC_OK;
	}
}

/* roundtrip is roundtrip_body with at most one u64 attribute. */
static int roundtrip(ipsec_conn *c, uint8_t type, uint16_t attr, uint64_t val, int fd,
		     uint8_t want, struct reply *r)
{
	unsigned char body[12] = { 0 };
	size_t len = 0;
	if (attr != 0) {
		put16(body, attr);
		put16(body + 2, 8);
		put64(body + 4, val);
		len = 12;
	}
	return roundtrip_body(c, type, body, len, fd, want, r);
}

/* ---- storage of strings ---- */

/* A token's strings and bytes live in one allocation. */
struct store {
	char *mem;
	size_t off, size;
};

static size_t need(const struct reply *r, int t) { return r->a[t].present ? r->a[t].len + 1 : 1; }

static const char *put_str(struct store *s, const struct reply *r, int t)
{
	char *p = s->mem + s->off;
	size_t len = t >= 0 && r->a[t].present ? r->a[t].len : 0;
	if (len > 0)
		memcpy(p, r->a[t].val, len);
	p[len] = '\0';
	s->off += len + 1;
	return p;
}

/* fill_ptoken copies the pToken attributes of r (PTOKEN_REPLY, SUBSCRIBED,
 * EVENT) into out. */
static int fill_ptoken(ipsec_conn *c, const struct reply *r, ipsec_ptoken *out)
{
	struct store s = { .size = need(r, A_WHY_TEXT) + need(r, A_AUDIT) + need(r, A_LABEL) };
	s.mem = malloc(s.size);
	if (s.mem == NULL)
		return fail(c, IPSEC_E_SYSTEM, ENOMEM, "token API: out of memory");
	out->handle = a_u64(r, A_PTOKEN);
	out->itoken = a_u64(r, A_ITOKEN);
	out->is_protected = a_bool(r, A_PROTECTED);
	out->privacy_protected = a_bool(r, A_PRIVACY);
	out->integrity_protected = a_bool(r, A_INTEGRITY);
	out->compression_available = a_bool(r, A_COMPRESSION);
	out->why = (int)a_u16(r, A_WHY_CODE);
	out->why_text = put_str(&s, r, A_WHY_TEXT);
	out->audit = put_str(&s, r, A_AUDIT);
	out->label = put_str(&s, r, A_LABEL);
	out->mem_ = s.mem;
	return ok(c);
}

static int decode_ptoken(ipsec_conn *c, const struct reply *r, ipsec_ptoken_handle want, ipsec_ptoken *out)
{
	if (!r->a[A_PTOKEN].present || a_u64(r, A_PTOKEN) == 0)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: PTOKEN_REPLY without a pToken handle");
	if (want != 0 && a_u64(r, A_PTOKEN) != want)
		return fail(c, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: pToken %llu, asked for %llu",
			    (unsigned long long)a_u64(r, A_PTOKEN), (unsigned long long)want);
	return fill_ptoken(c, r, out);
}

/* ---- requests ---- */

int ipsec_ptoken_get(ipsec_conn *conn, int sockfd, ipsec_ptoken *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	if (sockfd < 0)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: invalid socket descriptor %d", sockfd);
	struct reply r;
	int rc = roundtrip(conn, T_PTOKEN_QUERY, 0, 0, sockfd, T_PTOKEN_REPLY, &r);
	if (rc != IPSEC_OK)
		return rc;
	return decode_ptoken(conn, &r, 0, out);
}

int ipsec_ptoken_lookup(ipsec_conn *conn, ipsec_ptoken_handle handle, ipsec_ptoken *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct reply r;
	int rc = roundtrip(conn, T_PTOKEN_GET, A_PTOKEN, handle, -1, T_PTOKEN_REPLY, &r);
	if (rc != IPSEC_OK)
		return rc;
	return decode_ptoken(conn, &r, handle, out);
}

int ipsec_ptoken_release(ipsec_conn *conn, ipsec_ptoken_handle handle)
{
	if (conn == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct reply r;
	int rc = roundtrip(conn, T_PTOKEN_RELEASE, A_PTOKEN, handle, -1, T_OK, &r);
	if (rc != IPSEC_OK)
		return rc;
	return ok(conn);
}

int ipsec_itoken_get(ipsec_conn *conn, ipsec_itoken_handle handle, ipsec_itoken *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct reply r;
	int rc = roundtrip(conn, T_ITOKEN_GET, A_ITOKEN, handle, -1, T_ITOKEN_REPLY, &r);
	if (rc != IPSEC_OK)
		return rc;
	if (!r.a[A_ITOKEN].present || a_u64(&r, A_ITOKEN) != handle)
		return fail(conn, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: ITOKEN_REPLY for another iToken");
	const struct attr *cb = &r.a[A_CHANNEL_BINDING];
	size_t cblen = cb->present ? cb->len : 0;
	struct store s = { .size = cblen + need(&r, A_REMOTE_ID) + need(&r, A_CERT_DN) + need(&r, A_CA_DN) +
				   need(&r, A_PUBKEY_ID) + need(&r, A_AUDIT) };
	s.mem = malloc(s.size);
	if (s.mem == NULL)
		return fail(conn, IPSEC_E_SYSTEM, ENOMEM, "token API: out of memory");
	out->handle = handle;
	out->auth_method = (int)a_u8(&r, A_AUTH_METHOD);
	if (cblen > 0) {
		memcpy(s.mem, cb->val, cblen);
		out->channel_binding = (const unsigned char *)s.mem;
		out->channel_binding_len = cblen;
		s.off = cblen;
	}
	out->remote_id = put_str(&s, &r, A_REMOTE_ID);
	out->cert_dn = put_str(&s, &r, A_CERT_DN);
	out->ca_dn = put_str(&s, &r, A_CA_DN);
	out->pubkey_id = put_str(&s, &r, A_PUBKEY_ID);
	out->audit = put_str(&s, &r, A_AUDIT);
	out->mem_ = s.mem;
	return ok(conn);
}

void ipsec_ptoken_free(ipsec_ptoken *pt)
{
	if (pt == NULL)
		return;
	free(pt->mem_);
	memset(pt, 0, sizeof *pt);
}

void ipsec_itoken_free(ipsec_itoken *it)
{
	if (it == NULL)
		return;
	free(it->mem_);
	memset(it, 0, sizeof *it);
}

/* ---- influence ---- */

int ipsec_protect(ipsec_conn *conn, int sockfd, int level, const char *peer_id, ipsec_grant *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	out->why_text = out->pin_iface = out->peer_id = "";
	if (sockfd < 0)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: invalid socket descriptor %d", sockfd);
	if (level < 0 || level > 255)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: level %d is not an enum ipsec_level", level);
	size_t plen = peer_id != NULL ? strlen(peer_id) : 0;
	if (plen > MAX_STRING)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: peer_id is longer than %u bytes", MAX_STRING);
	if (plen > 0 && !utf8_valid((const unsigned char *)peer_id, plen))
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: peer_id is not UTF-8");
	unsigned char body[MAX_REQUEST_BODY];
	size_t n = 0;
	put16(body, A_REQUIRE);
	put16(body + 2, 1);
	body[4] = (unsigned char)level;
	n = 5;
	if (plen > 0) {
		put16(body + n, A_PEER_ID);
		put16(body + n + 2, (uint16_t)plen);
		memcpy(body + n + 4, peer_id, plen);
		n += 4 + plen;
	}
	struct reply r;
	int rc = roundtrip_body(conn, T_PROTECT, body, n, sockfd, T_PROTECT_REPLY, &r);
	if (rc != IPSEC_OK)
		return rc;
	rc = decode_ptoken(conn, &r, 0, &out->ptoken);
	if (rc != IPSEC_OK)
		return rc;
	struct store s = { .size = need(&r, A_WHY_TEXT) + need(&r, A_PIN_IFACE) + need(&r, A_REMOTE_ID) };
	s.mem = malloc(s.size);
	if (s.mem == NULL) {
		ipsec_ptoken_free(&out->ptoken);
		return fail(conn, IPSEC_E_SYSTEM, ENOMEM, "token API: out of memory");
	}
	out->granted = (int)a_u8(&r, A_GRANTED);
	out->pin = (int)a_u8(&r, A_PIN);
	if (out->granted == IPSEC_LEVEL_NONE) {
		out->why = (int)a_u16(&r, A_WHY_CODE);
		out->why_text = put_str(&s, &r, A_WHY_TEXT);
	} else {
		out->why_text = put_str(&s, &r, -1);
	}
	out->pin_iface = put_str(&s, &r, A_PIN_IFACE);
	out->peer_id = put_str(&s, &r, A_REMOTE_ID);
	out->mem_ = s.mem;
	return ok(conn);
}

void ipsec_grant_free(ipsec_grant *grant)
{
	if (grant == NULL)
		return;
	ipsec_ptoken_free(&grant->ptoken);
	free(grant->mem_);
	memset(grant, 0, sizeof *grant);
}

const char *ipsec_level_name(int level)
{
	static const char *const names[] = { "NONE", "ENCRYPTION", "INTEGRITY", "BTNS", "CLEAR" };
	if (level >= 0 && (size_t)level < sizeof names / sizeof names[0])
		return names[level];
	return NULL;
}

const char *ipsec_pin_name(int pin)
{
	static const char *const names[] = { "NONE", "DEVICE", "XFRM", "BYPASS" };
	if (pin >= 0 && (size_t)pin < sizeof names / sizeof names[0])
		return names[pin];
	return NULL;
}

/* ---- names ---- */

static const char *const status_names[] = {
	[IPSEC_OK] = "OK",
	[IPSEC_E_BAD_MESSAGE] = "BAD_MESSAGE",
	[IPSEC_E_UNSUPPORTED_VERSION] = "UNSUPPORTED_VERSION",
	[IPSEC_E_UNKNOWN_TYPE] = "UNKNOWN_TYPE",
	[IPSEC_E_NO_FD] = "NO_FD",
	[IPSEC_E_TOO_MANY_FDS] = "TOO_MANY_FDS",
	[IPSEC_E_NOT_SOCKET] = "NOT_SOCKET",
	[IPSEC_E_NOT_INET] = "NOT_INET",
	[IPSEC_E_NOT_CONNECTED] = "NOT_CONNECTED",
	[IPSEC_E_UNSUPPORTED_PROTOCOL] = "UNSUPPORTED_PROTOCOL",
	[IPSEC_E_UNKNOWN_HANDLE] = "UNKNOWN_HANDLE",
	[IPSEC_E_LIMIT] = "LIMIT",
	[IPSEC_E_UNAVAILABLE] = "UNAVAILABLE",
	[IPSEC_E_INTERNAL] = "INTERNAL",
	[IPSEC_E_DENIED] = "DENIED",
	[IPSEC_E_ADDRESS_MISMATCH] = "ADDRESS_MISMATCH",
	[IPSEC_E_NO_EVENTS] = "NO_EVENTS",
	[IPSEC_E_BAD_LEVEL] = "BAD_LEVEL",
	[IPSEC_E_PIN_FAILED] = "PIN_FAILED",
};

static const char *const local_names[] = { "SYSTEM", "TIMEOUT", "CLOSED", "BAD_REPLY", "INVALID", "OVERFLOW" };

static const char *const status_texts[] = {
	[IPSEC_OK] = "IPSEC_OK: success",
	[IPSEC_E_BAD_MESSAGE] = "IPSEC_E_BAD_MESSAGE: obold could not decode the request",
	[IPSEC_E_UNSUPPORTED_VERSION] = "IPSEC_E_UNSUPPORTED_VERSION: obold does not speak this protocol version",
	[IPSEC_E_UNKNOWN_TYPE] = "IPSEC_E_UNKNOWN_TYPE: obold does not know this request",
	[IPSEC_E_NO_FD] = "IPSEC_E_NO_FD: no socket was passed",
	[IPSEC_E_TOO_MANY_FDS] = "IPSEC_E_TOO_MANY_FDS: pass exactly one socket, only with a pToken query",
	[IPSEC_E_NOT_SOCKET] = "IPSEC_E_NOT_SOCKET: the descriptor is not a socket",
	[IPSEC_E_NOT_INET] = "IPSEC_E_NOT_INET: the socket is not IPv4 or IPv6",
	[IPSEC_E_NOT_CONNECTED] = "IPSEC_E_NOT_CONNECTED: the socket is not connected",
	[IPSEC_E_UNSUPPORTED_PROTOCOL] = "IPSEC_E_UNSUPPORTED_PROTOCOL: only TCP, UDP and SCTP sockets",
	[IPSEC_E_UNKNOWN_HANDLE] = "IPSEC_E_UNKNOWN_HANDLE: no such token on this connection",
	[IPSEC_E_LIMIT] = "IPSEC_E_LIMIT: too many pTokens or connections",
	[IPSEC_E_UNAVAILABLE] = "IPSEC_E_UNAVAILABLE: IPsec state unavailable, retry later",
	[IPSEC_E_INTERNAL] = "IPSEC_E_INTERNAL: obold failed, see its log",
	[IPSEC_E_DENIED] = "IPSEC_E_DENIED: this user may not use the token API",
	[IPSEC_E_ADDRESS_MISMATCH] = "IPSEC_E_ADDRESS_MISMATCH: the datagram's local address is not the socket's",
	[IPSEC_E_NO_EVENTS] = "IPSEC_E_NO_EVENTS: this obold cannot send events",
	[IPSEC_E_BAD_LEVEL] = "IPSEC_E_BAD_LEVEL: not a protection level obold knows",
	[IPSEC_E_PIN_FAILED] = "IPSEC_E_PIN_FAILED: obold could not pin the socket; its traffic is not held back",
};

static const char *const local_texts[] = {
	"IPSEC_E_SYSTEM: a system call failed (see errno)",
	"IPSEC_E_TIMEOUT: no reply from obold in time",
	"IPSEC_E_CLOSED: obold closed the connection",
	"IPSEC_E_BAD_REPLY: malformed or unexpected reply from obold",
	"IPSEC_E_INVALID: invalid argument",
	"IPSEC_E_OVERFLOW: too many unread events",
};

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

const char *ipsec_status_name(int code)
{
	if (code >= 0 && (size_t)code < NELEM(status_names))
		return status_names[code];
	if (code >= IPSEC_E_SYSTEM && (size_t)(code - IPSEC_E_SYSTEM) < NELEM(local_names))
		return local_names[code - IPSEC_E_SYSTEM];
	return NULL;
}

const char *ipsec_strerror(int code)
{
	if (code >= 0 && (size_t)code < NELEM(status_texts) && status_texts[code] != NULL)
		return status_texts[code];
	if (code >= IPSEC_E_SYSTEM && (size_t)(code - IPSEC_E_SYSTEM) < NELEM(local_texts))
		return local_texts[code - IPSEC_E_SYSTEM];
	return "unknown token API error";
}

const char *ipsec_auth_method_name(int method)
{
	static const char *const names[] = {
		"NONE", "BTNS", "LEAPOFFAITH", "PRESHAREDKEY", "GROUPKEY", "XAUTH", "EAP",
		"PKIX_TRUSTED", "PKIX_INLINE", "PKIX_OFFLINE", "DNSSEC",
	};
	if (method >= 0 && (size_t)method < NELEM(names))
		return names[method];
	return NULL;
}

const char *ipsec_why_name(int why)
{
	static const char *const names[] = {
		"NONE", "NO_POLICY", "NO_SA", "NEGOTIATION_FAILED", "AUTH_FAILED", "LABEL_DENIED",
		"OE_NO_RECORDS", "OE_UNUSABLE", "LOCAL", "BLOCKED", "UNKNOWN",
	};
	static const char *const protect_names[] = {
		"PEER_MISMATCH", "DENIED", "POLICY_WINS", "DNS_TIMEOUT", "INSUFFICIENT",
	};
	if (why >= 0 && (size_t)why < NELEM(names))
		return names[why];
	if (why >= IPSEC_WHY_PEER_MISMATCH && (size_t)(why - IPSEC_WHY_PEER_MISMATCH) < NELEM(protect_names))
		return protect_names[why - IPSEC_WHY_PEER_MISMATCH];
	if (why == IPSEC_WHY_LABEL_UNKNOWN)
		return "LABEL_UNKNOWN";
	return NULL;
}

/* ---- datagrams ---- */

/* put_addr appends an address attribute for sa (AF_INET or AF_INET6;
 * IPv4-mapped IPv6 addresses are sent as IPv4) and, when port_attr is not
 * 0, its port. Returns the new length, or 0 for an unusable address. */
static size_t put_addr(unsigned char *b, size_t len, uint16_t attr, uint16_t port_attr,
		       const struct sockaddr *sa, socklen_t salen)
{
	const unsigned char *a;
	size_t alen;
	uint16_t port;
	static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
	if (sa->sa_family == AF_INET && salen >= (socklen_t)sizeof(struct sockaddr_in)) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		a = (const unsigned char *)&in->sin_addr;
		alen = 4;
		port = ntohs(in->sin_port);
	} else if (sa->sa_family == AF_INET6 && salen >= (socklen_t)sizeof(struct sockaddr_in6)) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		a = (const unsigned char *)&in6->sin6_addr;
		alen = 16;
		if (memcmp(a, mapped, sizeof mapped) == 0) {
			a += 12;
			alen = 4;
		}
		port = ntohs(in6->sin6_port);
	} else {
		return 0;
	}
	put16(b + len, attr);
	put16(b + len + 2, (uint16_t)alen);
	memcpy(b + len + 4, a, alen);
	len += 4 + alen;
	if (port_attr != 0) {
		put16(b + len, port_attr);
		put16(b + len + 2, 2);
		put16(b + len + 4, port);
		len += 6;
	}
	return len;
}

int ipsec_ptoken_get_from(ipsec_conn *conn, int sockfd, const struct sockaddr *from, socklen_t fromlen,
			  const struct sockaddr *local, socklen_t locallen, ipsec_ptoken *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	if (sockfd < 0)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: invalid socket descriptor %d", sockfd);
	unsigned char body[64];
	size_t len = from != NULL ? put_addr(body, 0, A_PEER_ADDR, A_PEER_PORT, from, fromlen) : 0;
	if (len == 0)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: the sender must be an IPv4 or IPv6 address");
	if (local != NULL) {
		size_t l2 = put_addr(body, len, A_LOCAL_ADDR, 0, local, locallen);
		if (l2 == 0)
			return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: the local address must be IPv4 or IPv6");
		len = l2;
	}
	struct reply r;
	int rc = roundtrip_body(conn, T_PTOKEN_QUERY_FROM, body, len, sockfd, T_PTOKEN_REPLY, &r);
	if (rc != IPSEC_OK)
		return rc;
	return decode_ptoken(conn, &r, 0, out);
}

int ipsec_recvfrom_ptoken(ipsec_conn *conn, int sockfd, void *buf, size_t len, int flags, size_t *received,
			  struct sockaddr *from, socklen_t *fromlen, ipsec_ptoken *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (received != NULL)
		*received = 0;
	if (conn == NULL || out == NULL || received == NULL || (buf == NULL && len > 0) ||
	    (from != NULL && fromlen == NULL)) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	int one = 1, domain = 0;
	socklen_t dl = sizeof domain;
	if (getsockopt(sockfd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) < 0)
		return sys_fail(conn, "SO_DOMAIN of the UDP socket");
	if (domain == AF_INET6) {
		if (setsockopt(sockfd, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof one) < 0)
			return sys_fail(conn, "turn on IPV6_RECVPKTINFO");
		/* IPv4 datagrams on a dual-stack socket carry IP_PKTINFO. */
		(void)setsockopt(sockfd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one);
	} else if (setsockopt(sockfd, IPPROTO_IP, IP_PKTINFO, &one, sizeof one) < 0) {
		return sys_fail(conn, "turn on IP_PKTINFO");
	}
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof ss);
	union {
		char buf[CMSG_SPACE(sizeof(struct in6_pktinfo)) + CMSG_SPACE(sizeof(struct in_pktinfo))];
		struct cmsghdr align;
	} cm;
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	struct msghdr mh;
	memset(&mh, 0, sizeof mh);
	mh.msg_name = &ss;
	mh.msg_namelen = sizeof ss;
	mh.msg_iov = &iov;
	mh.msg_iovlen = 1;
	mh.msg_control = cm.buf;
	mh.msg_controllen = sizeof cm.buf;
	ssize_t n;
	do {
		n = recvmsg(sockfd, &mh, flags);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return sys_fail(conn, "read a datagram");
	*received = (size_t)n;
	if (from != NULL) {
		socklen_t copy = mh.msg_namelen < *fromlen ? mh.msg_namelen : *fromlen;
		memcpy(from, &ss, copy);
		*fromlen = mh.msg_namelen;
	}
	struct sockaddr_storage local;
	memset(&local, 0, sizeof local);
	socklen_t locallen = 0;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h != NULL; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level == IPPROTO_IP && h->cmsg_type == IP_PKTINFO &&
		    h->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
			struct in_pktinfo pi;
			memcpy(&pi, CMSG_DATA(h), sizeof pi);
			struct sockaddr_in *in = (struct sockaddr_in *)&local;
			in->sin_family = AF_INET;
			in->sin_addr = pi.ipi_addr; /* the header's destination */
			locallen = sizeof *in;
		} else if (h->cmsg_level == IPPROTO_IPV6 && h->cmsg_type == IPV6_PKTINFO &&
			   h->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
			struct in6_pktinfo pi;
			memcpy(&pi, CMSG_DATA(h), sizeof pi);
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&local;
			in6->sin6_family = AF_INET6;
			in6->sin6_addr = pi.ipi6_addr;
			locallen = sizeof *in6;
		}
	}
	return ipsec_ptoken_get_from(conn, sockfd, (const struct sockaddr *)&ss, mh.msg_namelen,
				     locallen > 0 ? (const struct sockaddr *)&local : NULL, locallen, out);
}

/* ---- events ---- */

int ipsec_subscribe(ipsec_conn *conn, int sockfd, ipsec_subscription *id, ipsec_ptoken *now)
{
	if (now != NULL)
		memset(now, 0, sizeof *now);
	if (conn == NULL || id == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	*id = 0;
	if (sockfd < 0)
		return fail(conn, IPSEC_E_INVALID, EINVAL, "token API: invalid socket descriptor %d", sockfd);
	struct reply r;
	int rc = roundtrip(conn, T_SUBSCRIBE, 0, 0, sockfd, T_SUBSCRIBED, &r);
	if (rc != IPSEC_OK)
		return rc;
	if (a_u64(&r, A_SUBSCRIPTION) == 0)
		return fail(conn, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: SUBSCRIBED without a subscription");
	if (now != NULL && (rc = fill_ptoken(conn, &r, now)) != IPSEC_OK)
		return rc;
	*id = a_u64(&r, A_SUBSCRIPTION);
	return ok(conn);
}

int ipsec_unsubscribe(ipsec_conn *conn, ipsec_subscription id)
{
	if (conn == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct reply r;
	int rc = roundtrip(conn, T_UNSUBSCRIBE, A_SUBSCRIPTION, id, -1, T_OK, &r);
	if (rc != IPSEC_OK)
		return rc;
	return ok(conn);
}

int ipsec_event_next(ipsec_conn *conn, ipsec_event *out)
{
	if (out != NULL)
		memset(out, 0, sizeof *out);
	if (conn == NULL || out == NULL) {
		errno = EINVAL;
		return IPSEC_E_INVALID;
	}
	struct reply r;
	for (;;) {
		int rc;
		if (conn->evq_head != NULL) {
			struct queued_event *q = conn->evq_head;
			conn->evq_head = q->next;
			if (conn->evq_head == NULL)
				conn->evq_tail = NULL;
			conn->evq_len--;
			memcpy(conn->buf, q->data, q->len);
			rc = decode(conn, q->len, &r);
			free(q);
		} else {
			size_t n;
			rc = recv_one(conn, &r, &n);
		}
		if (rc != IPSEC_OK)
			return rc;
		if (r.type == T_EVENT && r.id == 0)
			break;
		/* a late reply to an abandoned request: not an event */
	}
	if (a_u64(&r, A_SUBSCRIPTION) == 0 || !r.a[A_EVENT_KIND].present)
		return fail(conn, IPSEC_E_BAD_REPLY, 0, "token API: bad reply: EVENT without subscription or kind");
	out->subscription = a_u64(&r, A_SUBSCRIPTION);
	out->kind = (int)a_u8(&r, A_EVENT_KIND);
	int rc = fill_ptoken(conn, &r, &out->state);
	if (rc != IPSEC_OK)
		memset(out, 0, sizeof *out);
	return rc;
}

bool ipsec_event_pending(const ipsec_conn *conn) { return conn != NULL && conn->evq_head != NULL; }

int ipsec_token_fd(const ipsec_conn *conn) { return conn != NULL ? conn->fd : -1; }

void ipsec_event_free(ipsec_event *ev)
{
	if (ev == NULL)
		return;
	ipsec_ptoken_free(&ev->state);
	memset(ev, 0, sizeof *ev);
}

const char *ipsec_event_kind_name(int kind)
{
	static const char *const names[] = {
		NULL, "UP", "DOWN", "REKEYED", "REKEY_FAILED", "IDENTITY_CHANGED", "PROTECTION_CHANGED",
	};
	if (kind >= 0 && (size_t)kind < NELEM(names))
		return names[kind];
	return NULL;
}
