/*
 * cecho answers NATS requests on one subject, as the suite workload's
 * "echo" mode does, in C with nothing but libc: the benchmarks' measure of
 * what a warm deploy costs a workload whose own start is next to nothing
 * (the Go runtime's start alone is tens of milliseconds under TCG).
 *
 *	cecho echo <subject>
 *
 * It reads NATS_URL (nats://[user[:pass]@]host:port, host a literal IPv4
 * address or localhost), prints "ready" once its subscription is flushed,
 * answers each request with "echo: " and the request's data, and exits 0 on
 * SIGTERM. Protocol errors exit 3, bad arguments 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int fd;
static char in[(1 << 20) + 4096]; /* NATS's default max_payload, and a line */
static size_t have, used;

static void die(const char *what, const char *detail) {
	fprintf(stderr, "cecho: %s: %s\n", what, detail);
	exit(3);
}

static void on_term(int sig) {
	(void)sig;
	_exit(0);
}

static void writeall(const char *p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			die("write", "connection lost");
		p += w;
		n -= (size_t)w;
	}
}

/* fill reads more of the connection; the buffer keeps unread bytes. */
static void fill(void) {
	if (used > 0) {
		memmove(in, in + used, have - used);
		have -= used;
		used = 0;
	}
	if (have == sizeof in)
		die("read", "line too long");
	ssize_t r = read(fd, in + have, sizeof in - have);
	if (r <= 0)
		die("read", "connection closed");
	have += (size_t)r;
}

/* line returns the next protocol line, without its CRLF. */
static char *line(void) {
	for (;;) {
		char *start = in + used;
		char *end = memmem(start, have - used, "\r\n", 2);
		if (end != NULL) {
			*end = 0;
			used = (size_t)(end - in) + 2;
			return start;
		}
		fill();
	}
}

/* payload returns the next n bytes and their CRLF. */
static char *payload(size_t n) {
	if (n + 2 > sizeof in)
		die("read", "message too big");
	while (have - used < n + 2)
		fill();
	char *p = in + used;
	used += n + 2;
	return p;
}

/* unescape decodes a URL's %XX in place. */
static void unescape(char *s) {
	char *o = s;
	for (; *s; s++) {
		if (s[0] == '%' && s[1] && s[2]) {
			char hex[3] = {s[1], s[2], 0};
			*o++ = (char)strtol(hex, NULL, 16);
			s += 2;
		} else {
			*o++ = *s;
		}
	}
	*o = 0;
}

/* quote writes s as a JSON string's contents into out. */
static void quote(char *out, size_t size, const char *s) {
	size_t n = 0;
	for (; *s && n + 3 < size; s++) {
		if (*s == '"' || *s == '\\')
			out[n++] = '\\';
		out[n++] = *s;
	}
	out[n] = 0;
}

int main(int argc, char **argv) {
	if (argc != 3 || strcmp(argv[1], "echo") != 0) {
		fprintf(stderr, "usage: cecho echo <subject>\n");
		return 2;
	}
	const char *subject = argv[2];
	signal(SIGTERM, on_term);

	char url[1024], user[512] = "", pass[512] = "";
	const char *env = getenv("NATS_URL");
	if (env == NULL || strncmp(env, "nats://", 7) != 0 || strlen(env) >= sizeof url)
		die("NATS_URL", env ? env : "not set");
	strcpy(url, env + 7);
	char *host = url, *at = strrchr(url, '@');
	if (at != NULL) {
		*at = 0;
		host = at + 1;
		char *colon = strchr(url, ':');
		if (colon != NULL) {
			*colon = 0;
			unescape(colon + 1);
			quote(pass, sizeof pass, colon + 1);
		}
		unescape(url);
		quote(user, sizeof user, url);
	}
	char *port = strrchr(host, ':');
	if (port == NULL)
		die("NATS_URL", "no port");
	*port++ = 0;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(port))};
	if (strcmp(host, "localhost") == 0)
		host = "127.0.0.1";
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		die("NATS_URL", "host is not an IPv4 address");

	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
		die("connect", host);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (strncmp(line(), "INFO ", 5) != 0)
		die("handshake", "no INFO");

	char out[2048];
	int n = snprintf(out, sizeof out,
		"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"cecho\",\"lang\":\"c\",\"version\":\"1\",\"protocol\":1,\"user\":\"%s\",\"pass\":\"%s\"}\r\n"
		"SUB %s 1\r\nPING\r\n",
		user, pass, subject);
	writeall(out, (size_t)n);
	for (;;) {
		char *l = line();
		if (strcmp(l, "PONG") == 0)
			break;
		if (strncmp(l, "-ERR", 4) == 0)
			die("server", l);
	}
	printf("ready\n");
	fflush(stdout);

	for (;;) {
		char *l = line();
		if (strcmp(l, "PING") == 0) {
			writeall("PONG\r\n", 6);
		} else if (strncmp(l, "-ERR", 4) == 0) {
			die("server", l);
		} else if (strncmp(l, "MSG ", 4) == 0) {
			/* MSG <subject> <sid> [reply-to] <#bytes> */
			char *f[5];
			int nf = 0;
			for (char *tok = strtok(l + 4, " "); tok && nf < 5; tok = strtok(NULL, " "))
				f[nf++] = tok;
			if (nf < 3)
				die("server", "bad MSG");
			char reply[256] = "";
			if (nf == 4)
				snprintf(reply, sizeof reply, "%s", f[2]);
			size_t size = (size_t)strtoul(f[nf - 1], NULL, 10);
			char *data = payload(size);
			if (reply[0] == 0)
				continue;
			char head[512];
			int hn = snprintf(head, sizeof head, "PUB %s %zu\r\necho: ", reply, size + 6);
			writeall(head, (size_t)hn);
			writeall(data, size);
			writeall("\r\n", 2);
		}
	}
}
