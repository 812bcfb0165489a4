// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * ioreq-test DOMID: a device model for the `ioreq` test guest
 * (tests/guests/ioreq, whose header gives the device's rules), through an
 * I/O request fd of /dev/oxen (ABI 1.6, docs/hypercalls.md "I/O requests").
 *
 * It registers the guest's ranges (after checking that ranges over its RAM,
 * over devices the hypervisor emulates, over its own ranges, and a second
 * server are refused), prints "ioreq-test: serving dN", then serves: it
 * sleeps in poll(2) until dom0's event line wakes it, drains the posted ring
 * (counting and summing the writes), answers each READY slot (reads from the
 * rule, writes checked against it) and calls IOREQ_DONE. When the guest
 * writes the EXIT register, it prints its counts and kills itself without
 * answering: the hypervisor must complete that write and every later access
 * as a dead device's. Exit status 1 if anything went wrong before.
 *
 * ioreq-test DOMID hang: registers the ranges, then never answers (it says
 * which access waits, once): the vCPU must stay asleep, and its domain must
 * still pause and be destroyed without it.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "oxen_abi.h"

_Static_assert(sizeof(struct oxen_ioreq_page) == OXEN_IOREQ_PAGE_SIZE, "page layout");

#define REQ 0x20000000ull
#define POSTED 0x20001000ull
#define PORTS 0x5000
#define COUNTS 0x800
#define EXIT 0x808
#define COUNT 0xff0
#define SUM 0xff8

static volatile struct oxen_ioreq_page *page;
static int fd;
static unsigned long long requests, posted, posted_sum, writes_ok, writes_bad;
static int failed;

static uint64_t mask(unsigned size)
{
	return size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;
}

/* The guest's rule: a read of `size` bytes at `addr`. */
static uint64_t pattern(uint64_t addr, unsigned size)
{
	uint64_t x = addr * 0x9e3779b97f4a7c15ull;

	x = (x << 17) | (x >> 47);
	return (x ^ size) & mask(size);
}

/* Takes every posted write up to the hypervisor's head. */
static void drain(void)
{
	uint32_t head = __atomic_load_n(&page->posted_head, __ATOMIC_ACQUIRE);
	uint32_t tail = page->posted_tail;

	while (tail != head) {
		volatile struct oxen_posted_write *w = &page->posted[tail % OXEN_IOREQ_POSTED_ENTRIES];

		posted++;
		posted_sum += w->data;
		tail++;
	}
	__atomic_store_n(&page->posted_tail, tail, __ATOMIC_RELEASE);
}

static void refused(const char *what, int kind, uint64_t start, uint64_t len, int want)
{
	struct oxen_ioreq_range r = { .kind = kind, .start = start, .len = len };
	int err = ioctl(fd, OXEN_IOCTL_IOREQ_RANGE, &r) ? errno : 0;

	printf("ioreq-test: range over %s: %s%s\n", what, err ? strerror(err) : "accepted",
	       err == want ? " (refused as it must be)" : " WRONG");
	failed += err != want;
}

static void range(int kind, uint32_t flags, uint64_t start, uint64_t len)
{
	struct oxen_ioreq_range r = { .kind = kind, .flags = flags, .start = start, .len = len };

	if (ioctl(fd, OXEN_IOCTL_IOREQ_RANGE, &r)) {
		printf("ioreq-test: range %#llx+%#llx: %s\n", (unsigned long long)start,
		       (unsigned long long)len, strerror(errno));
		exit(1);
	}
}

/* Answers slot `v`; returns 0, or the exit request. */
static int serve(unsigned v)
{
	volatile struct oxen_ioreq_slot *s = &page->slots[v];
	unsigned size = s->size, write = s->dir == OXEN_IOREQ_DIR_WRITE;
	uint64_t addr = s->addr, data = s->data, answer = 0;
	struct oxen_ioreq_done done = { .vcpu = v };

	/* Writes posted before this request came first. */
	drain();
	if (size != 1 && size != 2 && size != 4 && size != 8) {
		printf("ioreq-test: slot %u: size %u\n", v, size);
		failed++;
	} else if (s->kind == OXEN_IOREQ_KIND_MMIO && addr >= POSTED && addr < POSTED + 0x1000) {
		if (write) {
			/* The ring was full: it came as a request. */
			posted++;
			posted_sum += data;
		} else {
			answer = addr - POSTED == COUNT ? posted : addr - POSTED == SUM ? posted_sum : 0;
		}
	} else if (!write) {
		answer = s->kind == OXEN_IOREQ_KIND_MMIO && addr == REQ + COUNTS ? writes_ok << 32 | writes_bad
										   : pattern(addr, size);
	} else if (s->kind == OXEN_IOREQ_KIND_MMIO && addr == REQ + EXIT) {
		return 1;
	} else {
		int ok = data == pattern(addr + 0x10000, size);

		writes_ok += ok;
		writes_bad += !ok;
		printf("ioreq-test: vcpu %u %s%u %#llx = %#llx %s\n", v, s->kind == OXEN_IOREQ_KIND_PIO ? "out" : "mmio write",
		       8 * size, (unsigned long long)addr, (unsigned long long)data, ok ? "as expected" : "WRONG");
	}
	s->data = answer;
	__atomic_store_n(&s->state, OXEN_IOREQ_STATE_DONE, __ATOMIC_RELEASE);
	requests++;
	if (ioctl(fd, OXEN_IOCTL_IOREQ_DONE, &done)) {
		printf("ioreq-test: IOREQ_DONE: %s\n", strerror(errno));
		failed++;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct oxen_domain_ref ref = {};
	struct pollfd p;
	int dev, second;
	unsigned v;

	int hang = argc == 3 && !strcmp(argv[2], "hang");

	if (argc != 2 && !hang) {
		fprintf(stderr, "usage: ioreq-test DOMID [hang]\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	ref.domid = strtoul(argv[1], NULL, 0);
	dev = open("/dev/oxen", O_RDWR);
	if (dev < 0) {
		perror("ioreq-test: /dev/oxen");
		return 1;
	}
	fd = ioctl(dev, OXEN_IOCTL_IOREQ_OPEN, &ref);
	if (fd < 0) {
		perror("ioreq-test: IOREQ_OPEN");
		return 1;
	}
	second = ioctl(dev, OXEN_IOCTL_IOREQ_OPEN, &ref);
	printf("ioreq-test: a second server for d%u: %s\n", ref.domid,
	       second < 0 && errno == EBUSY ? "refused (EBUSY) as it must be" : "WRONG");
	failed += !(second < 0 && errno == EBUSY);
	page = mmap(NULL, OXEN_IOREQ_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (page == MAP_FAILED) {
		perror("ioreq-test: mmap");
		return 1;
	}
	range(OXEN_IOREQ_KIND_MMIO, 0, REQ, 0x1000);
	range(OXEN_IOREQ_KIND_MMIO, OXEN_IOREQ_FLAG_POSTED_WRITES, POSTED, 0x1000);
	range(OXEN_IOREQ_KIND_PIO, 0, PORTS, 16);
	refused("its RAM", OXEN_IOREQ_KIND_MMIO, 0x100000, 0x1000, EBUSY);
	refused("its local APIC", OXEN_IOREQ_KIND_MMIO, 0xfee00000, 0x1000, EBUSY);
	refused("its UART", OXEN_IOREQ_KIND_PIO, 0x3f8, 1, EBUSY);
	refused("its PCI configuration ports", OXEN_IOREQ_KIND_PIO, 0xcfc, 4, EBUSY);
	refused("a range of its own", OXEN_IOREQ_KIND_PIO, PORTS + 15, 2, EBUSY);
	refused("a misaligned range", OXEN_IOREQ_KIND_MMIO, 0x30000002, 0x800, EINVAL);
	printf("ioreq-test: serving d%u\n", ref.domid);
	for (;;) {
		p.fd = fd;
		p.events = POLLIN;
		if (poll(&p, 1, 60000) <= 0) {
			printf("ioreq-test: nothing for 60 s (%s)\n", strerror(errno));
			return 1;
		}
		drain();
		if (hang) {
			for (v = 0; v < OXEN_MAX_VCPUS; v++)
				if (page->slots[v].state == OXEN_IOREQ_STATE_READY)
					break;
			if (v < OXEN_MAX_VCPUS)
				printf("ioreq-test: hanging: vcpu %u waits on %#llx, never answered\n", v,
				       (unsigned long long)page->slots[v].addr);
			/* poll would say POLLIN again at once: sleep until killed. */
			pause();
		}
		for (v = 0; v < OXEN_MAX_VCPUS; v++) {
			if (__atomic_load_n(&page->slots[v].state, __ATOMIC_ACQUIRE) != OXEN_IOREQ_STATE_READY)
				continue;
			if (serve(v)) {
				printf("ioreq-test: served %llu requests and %llu posted writes; writes as expected %llu, not %llu; %d failed\n",
				       requests, posted, writes_ok, writes_bad, failed);
				printf("ioreq-test: exit request from vcpu %u: dying without answering it\n", v);
				fflush(stdout);
				kill(getpid(), SIGKILL);
			}
		}
	}
}
