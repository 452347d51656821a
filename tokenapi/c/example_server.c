/*
 * example_server.c - a TCP server that asks obold, for every client it
 * accepts, how the connection is protected (pToken) and who the peer is
 * (iToken), and prints both, one line each.
 *
 *   example_server PORT [TOKEN_SOCKET]
 *
 * PORT 0 picks a free port; the first line printed is "listening on PORT".
 */
#include "ipsec_token.h"

#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char *yn(bool b) { return b ? "yes" : "no"; }

static void print_ptoken(const ipsec_ptoken *pt)
{
	const char *why = ipsec_why_name(pt->why);
	printf("ptoken handle=%" PRIu64 " protected=%s privacy=%s integrity=%s compression=%s"
	       " itoken=%016" PRIx64 " label=\"%s\" why=%s why_text=\"%s\" audit=\"%s\"\n",
	       pt->handle, yn(pt->is_protected), yn(pt->privacy_protected),
	       yn(pt->integrity_protected), yn(pt->compression_available), pt->itoken,
	       pt->label, why ? why : "?", pt->why_text, pt->audit);
}

static void print_itoken(const ipsec_itoken *it)
{
	const char *m = ipsec_auth_method_name(it->auth_method);
	printf("itoken handle=%016" PRIx64 " auth=%s remote_id=\"%s\" cert_dn=\"%s\" ca_dn=\"%s\""
	       " pubkey_id=\"%s\" channel_binding=",
	       it->handle, m ? m : "?", it->remote_id, it->cert_dn, it->ca_dn, it->pubkey_id);
	for (size_t i = 0; i < it->channel_binding_len; i++)
		printf("%02x", it->channel_binding[i]);
	printf(" audit=\"%s\"\n", it->audit);
}

/* ask prints what obold says about client; it returns the status so the
 * caller can reconnect when obold went away. */
static int ask(ipsec_conn *tc, int client)
{
	ipsec_ptoken pt;
	int rc = ipsec_ptoken_get(tc, client, &pt);
	if (rc != IPSEC_OK) {
		printf("ptoken error=%s text=\"%s\"\n", ipsec_strerror(rc), ipsec_token_errtext(tc));
		return rc;
	}
	print_ptoken(&pt);
	if (pt.itoken != 0) {
		ipsec_itoken it;
		rc = ipsec_itoken_get(tc, pt.itoken, &it);
		if (rc == IPSEC_OK)
			print_itoken(&it);
		else
			printf("itoken error=%s text=\"%s\"\n", ipsec_strerror(rc), ipsec_token_errtext(tc));
		ipsec_itoken_free(&it);
	} else {
		printf("itoken none\n");
	}
	/* Free the pToken on obold too: a long-running server must, or it
	 * reaches max_ptokens_per_client. */
	int rrc = ipsec_ptoken_release(tc, pt.handle);
	ipsec_ptoken_free(&pt);
	return rc != IPSEC_OK ? rc : rrc;
}

static int listen_on(const char *port_s)
{
	char *end;
	errno = 0;
	unsigned long port = strtoul(port_s, &end, 10);
	if (errno != 0 || end == port_s || *end != '\0' || port > 65535) {
		fprintf(stderr, "example_server: bad port %s\n", port_s);
		return -1;
	}
	int one = 1, zero = 0;
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) { /* dual stack: IPv6 and IPv4-mapped */
		struct sockaddr_in6 a6;
		memset(&a6, 0, sizeof a6);
		a6.sin6_family = AF_INET6;
		a6.sin6_addr = in6addr_any;
		a6.sin6_port = htons((uint16_t)port);
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(fd, (struct sockaddr *)&a6, sizeof a6) == 0)
			return fd;
		close(fd);
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* no IPv6 */
	if (fd < 0)
		return -1;
	struct sockaddr_in a4;
	memset(&a4, 0, sizeof a4);
	a4.sin_family = AF_INET;
	a4.sin_addr.s_addr = htonl(INADDR_ANY);
	a4.sin_port = htons((uint16_t)port);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, (struct sockaddr *)&a4, sizeof a4) < 0) {
		int err = errno;
		close(fd);
		errno = err;
		return -1;
	}
	return fd;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: example_server PORT [TOKEN_SOCKET]\n");
		return 2;
	}
	const char *path = argc == 3 ? argv[2] : NULL; /* NULL: default socket */
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);

	int ls = listen_on(argv[1]);
	if (ls < 0 || listen(ls, 16) < 0) {
		perror("example_server: listen");
		return 1;
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	if (getsockname(ls, (struct sockaddr *)&ss, &sl) < 0) {
		perror("example_server: getsockname");
		return 1;
	}
	unsigned port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
						 : ntohs(((struct sockaddr_in *)&ss)->sin_port);
	printf("listening on %u\n", port);

	ipsec_conn *tc = ipsec_token_open(path);
	if (tc == NULL) {
		fprintf(stderr, "example_server: token API %s: %s (is obold running with [tokenapi] enabled?)\n",
			path ? path : IPSEC_TOKEN_DEFAULT_SOCKET, strerror(errno));
		return 1;
	}
	for (;;) {
		int client = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (client < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("example_server: accept");
			break;
		}
		int rc = ask(tc, client);
		if (rc == IPSEC_E_CLOSED || rc == IPSEC_E_SYSTEM || rc == IPSEC_E_TIMEOUT) {
			/* obold restarted or the connection is out of step: reconnect
			 * (our pTokens went with the old connection). */
			ipsec_token_close(tc);
			tc = ipsec_token_open(path);
			if (tc == NULL) {
				fprintf(stderr, "example_server: token API reconnect: %s\n", strerror(errno));
				close(client);
				break;
			}
		}
		static const char msg[] = "hello from example_server\n";
		(void)!write(client, msg, sizeof msg - 1);
		close(client);
	}
	ipsec_token_close(tc);
	close(ls);
	return 1;
}
