// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-dirty-test: dirty-page logging (ABI 1.8, domctl LOG_DIRTY) from dom0.
 *
 *   oxen-dirty-test DOMID MEM_MIB
 *
 * DOMID is a running `echo` domU (tests/guests/echo) of MEM_MIB MiB: a line
 * "dirty N M ..." typed on its console (domctl CONSOLE_INPUT) makes it write
 * one byte in each of those pages of a buffer of its own and answer
 * "DIRTIED gfn 0x.. 0x.." with their frame numbers (read back with domctl
 * CONSOLE_READ). With logging on, CLEAN must report at least those frames;
 * the others it reports are the guest's own writes while it handled the
 * line (its stack, its line buffer, its console state) and are printed with
 * their count. A CLEAN right after reports only what the guest wrote since
 * (it is blocked, waiting for input: few or none), and the frames it was
 * told to dirty are clean again until written again (CLEAN protected them
 * anew: the next "dirty" line shows up). PEEK does not clear. Then the
 * refusals, DISABLE, and ENABLE again: the caller destroys the domain with
 * logging on (its memory must come back to the byte).
 *
 * Prints "check: NAME: ok" or "check: NAME: FAILED (why)" lines as
 * dom0-bootstrap/tests/lib.sh does; exits with the number of failures.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "oxen_abi.h"

static int failures;
static int oxen_fd;

/*
 * Waits until dom0's console has sent what was printed: the guest's answers
 * and the hypervisor's log lines share the serial line, and a dom0 line
 * still being sent when they come is cut in two (the tests match whole
 * lines).
 */
static void drain(void)
{
	fflush(stdout);
	if (isatty(STDOUT_FILENO))
		tcdrain(STDOUT_FILENO);
}

static void check(const char *name, int ok, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void check(const char *name, int ok, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		printf("check: %s: ok\n", name);
	} else {
		printf("check: %s: FAILED (", name);
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
		printf(")\n");
		failures++;
	}
	drain();
}

/* A domctl through the driver's generic ioctl: its result, or -errno. */
static long long domctl(uint64_t cmd, void *arg, size_t arg_len, void *buf, size_t buf_len)
{
	struct oxen_hypercall hc = {
		.nr = OXEN_HC_DOMCTL, .cmd = cmd,
		.arg = (uintptr_t)arg, .arg_len = arg_len,
		.buf = (uintptr_t)buf, .buf_len = buf_len,
	};

	if (ioctl(oxen_fd, OXEN_IOCTL_HYPERCALL, &hc) < 0)
		return -errno;
	return hc.result;
}

static long long log_dirty(uint32_t domid, uint32_t op, uint64_t first, uint64_t pages, uint64_t *bits, size_t bytes)
{
	struct oxen_log_dirty l = { .domid = domid, .op = op, .first = first, .pages = pages };

	return domctl(OXEN_DOMCTL_LOG_DIRTY, &l, sizeof(l), bits, bytes);
}

static int is_set(const uint64_t *bits, uint64_t page)
{
	return (bits[page / 64] >> (page % 64)) & 1;
}

/* Console bytes the domain wrote from *offset on (appended to out). */
static size_t console_read(uint32_t domid, uint64_t *offset, char *out, size_t len)
{
	struct oxen_ring_read r = { .domid = domid, .offset = *offset };
	long long n = domctl(OXEN_DOMCTL_CONSOLE_READ, &r, sizeof(r), out, len - 1);

	if (n < 0)
		return 0;
	out[n] = 0;
	*offset = r.next;
	return (size_t)n;
}

static int send_line(uint32_t domid, const char *line)
{
	struct oxen_domain_ref d = { .domid = domid };

	return domctl(OXEN_DOMCTL_CONSOLE_INPUT, &d, sizeof(d), (void *)line, strlen(line)) == (long long)strlen(line);
}

#define MAX_TOLD 8

/*
 * Types "dirty ..." and waits (up to 20 s) for the guest's DIRTIED line;
 * fills gfns with the frames it names. Returns how many, or -1.
 */
static int dirty_pages(uint32_t domid, uint64_t *offset, const char *pages, uint64_t *gfns)
{
	static char seen[65536];
	char line[128], chunk[4096];
	size_t have = 0;

	snprintf(line, sizeof(line), "dirty %s\n", pages);
	drain();
	if (!send_line(domid, line))
		return -1;
	seen[0] = 0;
	for (int tries = 0; tries < 400; tries++) {
		size_t n = console_read(domid, offset, chunk, sizeof(chunk));
		char *at, *end;
		int count = 0;

		if (n && have + n < sizeof(seen)) {
			memcpy(seen + have, chunk, n + 1);
			have += n;
		}
		at = strstr(seen, "DIRTIED gfn");
		end = at ? strchr(at, '\n') : NULL;
		if (end) {
			*end = 0;
			at += strlen("DIRTIED gfn");
			while (count < MAX_TOLD) {
				char *next;
				unsigned long long g = strtoull(at, &next, 16);

				if (next == at)
					break;
				gfns[count++] = g;
				at = next;
			}
			return count;
		}
		usleep(50000);
	}
	return -1;
}

/* Lists (up to 12 of) the set pages that are not in told[]. */
static uint64_t others(const uint64_t *bits, uint64_t pages, const uint64_t *told, int n, char *list, size_t len)
{
	uint64_t count = 0;
	size_t used = 0;

	list[0] = 0;
	for (uint64_t p = 0; p < pages; p++) {
		int mine = 0;

		if (!is_set(bits, p))
			continue;
		for (int i = 0; i < n; i++)
			mine |= told[i] == p;
		if (mine)
			continue;
		if (count < 12 && used < len)
			used += snprintf(list + used, len - used, " %#llx", (unsigned long long)p);
		count++;
	}
	return count;
}

int main(int argc, char **argv)
{
	uint32_t domid;
	uint64_t pages, words, offset = 0, told[MAX_TOLD], again[MAX_TOLD], *bits;
	size_t bytes;
	long long r, n1, n2;
	int n, all;
	char list[256], sink[4096];

	if (argc != 3) {
		fprintf(stderr, "usage: %s DOMID MEM_MIB\n", argv[0]);
		return 100;
	}
	domid = strtoul(argv[1], NULL, 0);
	pages = strtoull(argv[2], NULL, 0) * 256;
	words = (pages + 63) / 64;
	bytes = words * 8;
	bits = calloc(words + 1, 8);
	oxen_fd = open("/dev/" OXEN_DEVICE_NAME, O_RDWR);
	if (oxen_fd < 0 || !bits) {
		perror("dirty: /dev/oxen");
		return 100;
	}
	printf("dirty: d%u, %llu pages, a bitmap of %zu bytes\n", domid, (unsigned long long)pages, bytes);
	/* Skip what the console holds already. */
	while (console_read(domid, &offset, sink, sizeof(sink)))
		;

	r = log_dirty(domid, OXEN_LOG_DIRTY_ENABLE, 0, 0, NULL, 0);
	check("dirty: enable", r == 0, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_ENABLE, 0, 0, NULL, 0);
	check("dirty: enable twice refused (EBUSY)", r == -EBUSY, "gave %lld", r);
	/* A first round: whatever the guest wrote since ENABLE. */
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	check("dirty: first clean", r >= 0, "gave %lld", r);
	printf("dirty: %lld pages dirty between enable and the first clean\n", r);

	n = dirty_pages(domid, &offset, "3 17 40 63", told);
	check("dirty: the guest dirtied 4 pages", n == 4, "it said %d", n);
	if (n < 0)
		n = 0;
	r = log_dirty(domid, OXEN_LOG_DIRTY_PEEK, 0, pages, bits, bytes);
	all = 1;
	for (int i = 0; i < n; i++)
		all &= told[i] < pages && is_set(bits, told[i]);
	check("dirty: peek sees the 4 pages", r >= n && all, "peek gave %lld", r);
	n1 = log_dirty(domid, OXEN_LOG_DIRTY_PEEK, 0, pages, bits, bytes);
	all = 1;
	for (int i = 0; i < n; i++)
		all &= told[i] < pages && is_set(bits, told[i]);
	check("dirty: peek does not clear", n1 >= r && all, "a second peek gave %lld after %lld", n1, r);

	n1 = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	all = 1;
	for (int i = 0; i < n; i++)
		all &= told[i] < pages && is_set(bits, told[i]);
	check("dirty: clean reports the 4 pages", n1 >= n && all, "clean gave %lld", n1);
	printf("dirty: clean: %lld pages, %llu besides the 4 written:%s\n", n1,
	       (unsigned long long)others(bits, pages, told, n, list, sizeof(list)), list);
	/* What it wrote between the two calls, waiting for input: little. */
	n2 = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	all = 1;
	for (int i = 0; i < n; i++)
		all &= !is_set(bits, told[i]);
	check("dirty: a second clean right after reports few", n2 >= 0 && n2 < n1 && n2 <= 8 && all,
	      "it gave %lld after %lld (the 4 pages %s)", n2, n1, all ? "clean" : "still dirty");
	printf("dirty: second clean: %lld pages:%s\n", n2,
	       (others(bits, pages, told, 0, list, sizeof(list)), list));

	/* CLEAN protected them again: the next write to one is seen. */
	n = dirty_pages(domid, &offset, "17", again);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	check("dirty: a page written again after clean is reported again",
	      n == 1 && again[0] == told[1] && is_set(bits, again[0]) && !is_set(bits, told[0]) && !is_set(bits, told[2]),
	      "guest said %d page(s), clean gave %lld", n, r);

	/* A range: the word holding page 17's frame, from its multiple of 64. */
	if (told[1] < pages) {
		uint64_t first = told[1] & ~63ULL, w[2] = { 0, 0 };

		n = dirty_pages(domid, &offset, "17", again);
		r = log_dirty(domid, OXEN_LOG_DIRTY_PEEK, first, 64, w, 8);
		check("dirty: peek of one word", r >= 1 && ((w[0] >> (told[1] - first)) & 1), "gave %lld, word %#llx", r,
		      (unsigned long long)w[0]);
	}

	/* Refusals: nothing here may change the log or the domain. */
	r = log_dirty(0, OXEN_LOG_DIRTY_ENABLE, 0, 0, NULL, 0);
	check("dirty: dom0 refused (EPERM)", r == -EPERM, "gave %lld", r);
	r = log_dirty(0, OXEN_LOG_DIRTY_CLEAN, 0, 64, bits, 8);
	check("dirty: clean of dom0 refused (EPERM)", r == -EPERM, "gave %lld", r);
	r = log_dirty(0x7ff0, OXEN_LOG_DIRTY_ENABLE, 0, 0, NULL, 0);
	check("dirty: a missing domain refused (ENOENT)", r == -ENOENT, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 3, 64, bits, 8);
	check("dirty: a misaligned first refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, (pages + 63) / 64 * 64, 64, bits, 8);
	check("dirty: a range past the end refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, 128, bits, 8);
	check("dirty: a buffer too small refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, 0, bits, 8);
	check("dirty: no pages refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, 7, 0, 0, NULL, 0);
	check("dirty: an unknown op refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_ENABLE, 0, 0, bits, 8);
	check("dirty: enable with a buffer refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	/* The last word, clipped: pages past the end read clean. */
	memset(bits, 0xff, bytes + 8);
	r = log_dirty(domid, OXEN_LOG_DIRTY_PEEK, (pages - 1) / 64 * 64, 128, bits, 16);
	check("dirty: a range past the end from the last word is clipped", r >= 0 && bits[1] == 0,
	      "gave %lld, word after the end %#llx", r, (unsigned long long)bits[1]);

	r = log_dirty(domid, OXEN_LOG_DIRTY_DISABLE, 0, 0, NULL, 0);
	check("dirty: disable", r == 0, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	check("dirty: clean while off refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	r = log_dirty(domid, OXEN_LOG_DIRTY_DISABLE, 0, 0, NULL, 0);
	check("dirty: disable while off refused (EINVAL)", r == -EINVAL, "gave %lld", r);
	n = dirty_pages(domid, &offset, "3 40", again);
	check("dirty: the guest writes on after disable", n == 2, "it said %d", n);

	/* On again; the caller destroys the domain with logging on. */
	r = log_dirty(domid, OXEN_LOG_DIRTY_ENABLE, 0, 0, NULL, 0);
	check("dirty: enable again", r == 0, "gave %lld", r);
	n = dirty_pages(domid, &offset, "63", again);
	r = log_dirty(domid, OXEN_LOG_DIRTY_CLEAN, 0, pages, bits, bytes);
	check("dirty: logged again after a second enable", n == 1 && r >= 1 && is_set(bits, again[0]),
	      "guest said %d, clean gave %lld", n, r);
	printf("dirty: %d failure(s)\n", failures);
	return failures;
}
