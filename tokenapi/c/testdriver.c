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
 */
#include "ipsec_token.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
	uint64_t last_pt = 0, last_it = 0;
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
