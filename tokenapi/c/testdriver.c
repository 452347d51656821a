/*
 * testdriver.c - runs token API requests given on the command line through
 * the C library and prints the results as key=value lines, for
 * ctest_test.go (which runs the same requests through the Go client and
 * compares).
 *
 *   testdriver SOCKET OP...
 *   OP: q:FD      ipsec_ptoken_get on descriptor FD
 *       get[:N]   ipsec_ptoken_lookup (default: the last pToken's handle)
 *       rel[:N]   ipsec_ptoken_release
 *       it[:N]    ipsec_itoken_get (default: the last pToken's iToken)
 *       timeout:MS ipsec_token_set_timeout
 *       p:FD:LEVEL[:PEER] ipsec_protect (LEVEL a number, PEER an identity)
 *       sub:FD    ipsec_subscribe on descriptor FD
 *       unsub[:N] ipsec_unsubscribe (default: the last subscription)
 *       ev        ipsec_event_next
 *       poke:WORD asks the test (UDP to 127.0.0.1:$OBOL_POKE_PORT) to change
 *                 the IPsec state, and waits for its answer
 *       from:FD:ADDR:PORT[:LOCAL] ipsec_ptoken_get_from (IPv4 addresses)
 *       recv:FD   ipsec_recvfrom_ptoken
 *       poll:MS   whether an event is ready within MS: ipsec_event_pending,
 *                 then poll(2) on ipsec_token_fd
 */
#include "ipsec_token.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <poll.h>
#include <unistd.h>

/* esc prints s with bytes outside printable ASCII and '\\' as \xNN. */
static void esc(const char *key, const unsigned char *s, size_t n)
{
	printf("%s=", key);
	for (size_t i = 0; i < n; i++) {
		if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\')
			putchar(s[i]);
		else
			printf("\\x%02x", s[i]);
	}
	putchar('\n');
}

static void str(const char *key, const char *s) { esc(key, (const unsigned char *)s, strlen(s)); }

static const char *yn(bool b) { return b ? "true" : "false"; }

static void print_err(ipsec_conn *c, int rc)
{
	const char *name = ipsec_status_name(rc);
	if (name != NULL)
		printf("err=%s\n", name);
	else
		printf("err=%d\n", rc);
	if (rc == IPSEC_E_SYSTEM || rc == IPSEC_E_TIMEOUT)
		printf("errno=%d\n", ipsec_token_errno(c));
	if (rc < IPSEC_E_SYSTEM && ipsec_token_errtext(c)[0] == '\0')
		printf("errtext=missing\n");
}

static void print_pt(const ipsec_ptoken *pt)
{
	printf("pt.handle=%" PRIu64 "\n", pt->handle);
	printf("pt.itoken=%" PRIu64 "\n", pt->itoken);
	printf("pt.protected=%s\n", yn(pt->is_protected));
	printf("pt.privacy=%s\n", yn(pt->privacy_protected));
	printf("pt.integrity=%s\n", yn(pt->integrity_protected));
	printf("pt.compression=%s\n", yn(pt->compression_available));
	const char *w = ipsec_why_name(pt->why);
	if (w != NULL)
		printf("pt.why=%s\n", w);
	else
		printf("pt.why=%d\n", pt->why);
	str("pt.why_text", pt->why_text);
	str("pt.audit", pt->audit);
	str("pt.label", pt->label);
}

static void print_it(const ipsec_itoken *it)
{
	printf("it.handle=%" PRIu64 "\n", it->handle);
	const char *m = ipsec_auth_method_name(it->auth_method);
	if (m != NULL)
		printf("it.auth=%s\n", m);
	else
		printf("it.auth=%d\n", it->auth_method);
	str("it.remote_id", it->remote_id);
	str("it.cert_dn", it->cert_dn);
	str("it.ca_dn", it->ca_dn);
	str("it.pubkey_id", it->pubkey_id);
	printf("it.channel_binding=");
	for (size_t i = 0; i < it->channel_binding_len; i++)
		printf("%02x", it->channel_binding[i]);
	putchar('\n');
	str("it.audit", it->audit);
}

static void print_grant(const ipsec_grant *g)
{
	const char *l = ipsec_level_name(g->granted), *p = ipsec_pin_name(g->pin), *w = ipsec_why_name(g->why);
	if (l != NULL)
		printf("g.granted=%s\n", l);
	else
		printf("g.granted=%d\n", g->granted);
	if (w != NULL)
		printf("g.why=%s\n", w);
	else
		printf("g.why=%d\n", g->why);
	str("g.why_text", g->why_text);
	if (p != NULL)
		printf("g.pin=%s\n", p);
	else
		printf("g.pin=%d\n", g->pin);
	str("g.pin_iface", g->pin_iface);
	str("g.peer_id", g->peer_id);
	print_pt(&g->ptoken);
}

/* protect_op runs "p:FD:LEVEL[:PEER]". */
static int protect_op(ipsec_conn *c, const char *op, uint64_t *last_pt, uint64_t *last_it, int *rc)
{
	char *end;
	errno = 0;
	unsigned long fd = strtoul(op + 2, &end, 10);
	if (errno != 0 || end == op + 2 || *end != ':' || fd > 1024)
		return -1;
	const char *lv = end + 1;
	unsigned long level = strtoul(lv, &end, 10);
	if (end == lv || (*end != '\0' && *end != ':') || level > 255)
		return -1;
	const char *peer = *end == ':' ? end + 1 : NULL;
	ipsec_grant g;
	*rc = ipsec_protect(c, (int)fd, (int)level, peer, &g);
	if (*rc == IPSEC_OK) {
		print_grant(&g);
		*last_pt = g.ptoken.handle;
		*last_it = g.ptoken.itoken;
	}
	ipsec_grant_free(&g);
	return 0;
}

/* arg parses the number after "op:" or returns def when there is none. */
static int arg(const char *op, uint64_t def, uint64_t *out)
{
	const char *colon = strchr(op, ':');
	if (colon == NULL) {
		*out = def;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(colon + 1, &end, 10);
	if (errno != 0 || end == colon + 1 || *end != '\0')
		return -1;
	*out = (uint64_t)v;
	return 0;
}

/* poke sends word to the test's UDP port and waits for its one-line answer. */
static int poke(const char *word)
{
	const char *port = getenv("OBOL_POKE_PORT");
	if (port == NULL)
		return -1;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0)
		return -1;
	struct sockaddr_in to;
	memset(&to, 0, sizeof to);
	to.sin_family = AF_INET;
	to.sin_port = htons((uint16_t)atoi(port));
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	char ack[64];
	int rc = -1;
	if (sendto(s, word, strlen(word), 0, (struct sockaddr *)&to, sizeof to) >= 0) {
		ssize_t n = recv(s, ack, sizeof ack - 1, 0);
		if (n >= 0) {
			ack[n] = '\0';
			printf("poked=%s\n", ack);
			rc = 0;
		}
	}
	close(s);
	return rc;
}

static int sin4(const char *a, const char *port, struct sockaddr_in *out)
{
	memset(out, 0, sizeof *out);
	out->sin_family = AF_INET;
	out->sin_port = htons((uint16_t)atoi(port));
	return inet_pton(AF_INET, a, &out->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: testdriver SOCKET OP...\n");
		return 2;
	}
	ipsec_conn *c = ipsec_token_open(argv[1]);
	if (c == NULL) {
		printf("open=%s\n", strerror(errno));
		return 1;
	}
	uint64_t last_pt = 0, last_it = 0, last_sub = 0;
	for (int i = 2; i < argc; i++) {
		const char *op = argv[i];
		uint64_t v;
		int rc;
		printf("op=%s\n", op);
		if (strncmp(op, "q:", 2) == 0) {
			if (arg(op, 0, &v) < 0 || v > 1024)
				goto usage;
			ipsec_ptoken pt;
			rc = ipsec_ptoken_get(c, (int)v, &pt);
			if (rc == IPSEC_OK) {
				print_pt(&pt);
				last_pt = pt.handle;
				last_it = pt.itoken;
			}
			ipsec_ptoken_free(&pt);
		} else if (strncmp(op, "p:", 2) == 0) {
			if (protect_op(c, op, &last_pt, &last_it, &rc) < 0)
				goto usage;
		} else if (strncmp(op, "get", 3) == 0) {
			if (arg(op, last_pt, &v) < 0)
				goto usage;
			ipsec_ptoken pt;
			rc = ipsec_ptoken_lookup(c, v, &pt);
			if (rc == IPSEC_OK)
				print_pt(&pt);
			ipsec_ptoken_free(&pt);
		} else if (strncmp(op, "rel", 3) == 0) {
			if (arg(op, last_pt, &v) < 0)
				goto usage;
			rc = ipsec_ptoken_release(c, v);
			if (rc == IPSEC_OK)
				printf("released=%" PRIu64 "\n", v);
		} else if (strncmp(op, "it", 2) == 0) {
			if (arg(op, last_it, &v) < 0)
				goto usage;
			ipsec_itoken it;
			rc = ipsec_itoken_get(c, v, &it);
			if (rc == IPSEC_OK)
				print_it(&it);
			ipsec_itoken_free(&it);
		} else if (strncmp(op, "sub:", 4) == 0) {
			if (arg(op, 0, &v) < 0 || v > 1024)
				goto usage;
			ipsec_ptoken pt;
			ipsec_subscription id;
			rc = ipsec_subscribe(c, (int)v, &id, &pt);
			if (rc == IPSEC_OK) {
				printf("sub=%" PRIu64 "\n", id);
				print_pt(&pt);
				last_sub = id;
				last_it = pt.itoken;
			}
			ipsec_ptoken_free(&pt);
		} else if (strncmp(op, "unsub", 5) == 0) {
			if (arg(op, last_sub, &v) < 0)
				goto usage;
			rc = ipsec_unsubscribe(c, v);
			if (rc == IPSEC_OK)
				printf("unsubscribed=%" PRIu64 "\n", v);
		} else if (strcmp(op, "ev") == 0) {
			ipsec_event ev;
			rc = ipsec_event_next(c, &ev);
			if (rc == IPSEC_OK) {
				const char *k = ipsec_event_kind_name(ev.kind);
				printf("ev.sub=%" PRIu64 "\n", ev.subscription);
				if (k != NULL)
					printf("ev.kind=%s\n", k);
				else
					printf("ev.kind=%d\n", ev.kind);
				print_pt(&ev.state);
				last_it = ev.state.itoken;
			}
			ipsec_event_free(&ev);
		} else if (strncmp(op, "poll:", 5) == 0) {
			if (arg(op, 0, &v) < 0 || v > 60000)
				goto usage;
			bool ready = ipsec_event_pending(c);
			if (!ready) {
				struct pollfd p = { .fd = ipsec_token_fd(c), .events = POLLIN };
				ready = poll(&p, 1, (int)v) == 1 && (p.revents & POLLIN);
			}
			printf("readable=%s\n", yn(ready));
			rc = IPSEC_OK;
		} else if (strncmp(op, "poke:", 5) == 0) {
			if (poke(op + 5) < 0)
				goto usage;
			rc = IPSEC_OK;
		} else if (strncmp(op, "from:", 5) == 0) {
			char tmp[128];
			if (strlen(op) >= sizeof tmp)
				goto usage;
			strcpy(tmp, op + 5);
			char *fd = strtok(tmp, ":"), *addr = strtok(NULL, ":"), *port = strtok(NULL, ":"), *local = strtok(NULL, ":");
			struct sockaddr_in from, loc;
			if (fd == NULL || addr == NULL || port == NULL || sin4(addr, port, &from) < 0 ||
			    (local != NULL && sin4(local, "0", &loc) < 0))
				goto usage;
			ipsec_ptoken pt;
			rc = ipsec_ptoken_get_from(c, atoi(fd), (struct sockaddr *)&from, sizeof from,
						   local != NULL ? (struct sockaddr *)&loc : NULL, sizeof loc, &pt);
			if (rc == IPSEC_OK) {
				print_pt(&pt);
				last_pt = pt.handle;
				last_it = pt.itoken;
			}
			ipsec_ptoken_free(&pt);
		} else if (strncmp(op, "recv:", 5) == 0) {
			if (arg(op, 0, &v) < 0 || v > 1024)
				goto usage;
			unsigned char data[256];
			size_t n = 0;
			struct sockaddr_storage from;
			socklen_t fromlen = sizeof from;
			ipsec_ptoken pt;
			rc = ipsec_recvfrom_ptoken(c, (int)v, data, sizeof data, 0, &n, (struct sockaddr *)&from, &fromlen, &pt);
			if (n > 0 || rc == IPSEC_OK) {
				esc("dgram.data", data, n);
				char a[INET6_ADDRSTRLEN] = "";
				if (from.ss_family == AF_INET) {
					struct sockaddr_in *in = (struct sockaddr_in *)&from;
					inet_ntop(AF_INET, &in->sin_addr, a, sizeof a);
					printf("dgram.from=%s:%u\n", a, (unsigned)ntohs(in->sin_port));
				}
			}
			if (rc == IPSEC_OK) {
				print_pt(&pt);
				last_pt = pt.handle;
				last_it = pt.itoken;
			}
			ipsec_ptoken_free(&pt);
		} else if (strncmp(op, "timeout:", 8) == 0) {
			if (arg(op, 0, &v) < 0 || v > 600000)
				goto usage;
			rc = ipsec_token_set_timeout(c, (unsigned)v);
		} else {
			goto usage;
		}
		if (rc != IPSEC_OK)
			print_err(c, rc);
	}
	ipsec_token_close(c);
	return fflush(stdout) == 0 ? 0 : 1;
usage:
	fprintf(stderr, "testdriver: bad op\n");
	ipsec_token_close(c);
	return 2;
}
