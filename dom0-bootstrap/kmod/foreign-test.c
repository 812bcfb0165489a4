// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-foreign-test: foreign mappings (ABI 1.6) from dom0's user space.
 *
 *   oxen-foreign-test DOMID NAME MEM_MIB KERNEL_ELF CMDLINE_PART
 *
 * Maps the running domU DOMID (NAME, MEM_MIB of RAM, booted from KERNEL_ELF
 * with CMDLINE_PART in its command line) through /dev/oxen and checks what it
 * sees against what it knows independently: the kernel's read-only segments
 * against the ELF file, the hypervisor's StartInfo against the domain's
 * config; a write through one mapping read through another. Then the
 * refusals. Last, it destroys the domain (oxl destroy NAME) while the memory
 * is mapped and touches the old mapping: a read must give all ones (the
 * hypervisor's answer to dom0 reading outside its memory) or a signal, never
 * the domain's bytes, and the process must live on to unmap it.
 *
 * Prints "check: NAME: ok" or "check: NAME: FAILED (why)" lines as
 * dom0-bootstrap/tests/lib.sh does; exits with the number of failures.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "oxen_abi.h"

#define PAGE 4096UL

static int failures;

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
	fflush(stdout);
}

static int oxen_fd;

static int foreign_open(uint32_t domid)
{
	struct oxen_foreign_open o = { .domid = domid };

	return ioctl(oxen_fd, OXEN_IOCTL_FOREIGN_OPEN, &o);
}

/* mmap of `len` bytes at guest-physical `gpa`; MAP_FAILED with errno. */
static void *fmap(int fd, size_t len, uint64_t gpa)
{
	return mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)gpa);
}

/* The error an mmap of `len` at `gpa` of domain `domid` fails with (0: it mapped). */
static int map_error(uint32_t domid, size_t len, uint64_t gpa, int flags)
{
	int fd = foreign_open(domid), err = 0;
	void *p;

	if (fd < 0)
		return errno;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, (off_t)gpa);
	if (p == MAP_FAILED)
		err = errno;
	else
		munmap(p, len);
	close(fd);
	return err;
}

static sigjmp_buf touch_env;
static volatile sig_atomic_t touch_signal;

static void on_fault(int sig)
{
	touch_signal = sig;
	siglongjmp(touch_env, 1);
}

/* Reads the u64 at `p`: 0 and the value, or the signal that stopped it. */
static int touch_read(volatile uint64_t *p, uint64_t *out)
{
	touch_signal = 0;
	if (sigsetjmp(touch_env, 1) == 0)
		*out = *p;
	return touch_signal;
}

static int touch_write(volatile uint64_t *p, uint64_t v)
{
	touch_signal = 0;
	if (sigsetjmp(touch_env, 1) == 0)
		*p = v;
	return touch_signal;
}

static unsigned char *read_file(const char *path, size_t *len)
{
	struct stat st;
	unsigned char *buf;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) < 0)
		return NULL;
	buf = malloc(st.st_size);
	if (buf && read(fd, buf, st.st_size) != st.st_size) {
		free(buf);
		buf = NULL;
	}
	close(fd);
	*len = st.st_size;
	return buf;
}

/* The kernel's read-only loaded segments, byte for byte. Returns how many. */
static int compare_segments(const unsigned char *mem, size_t mem_len, const unsigned char *elf, size_t elf_len,
			    char *why, size_t why_len)
{
	const Elf64_Ehdr *eh = (const void *)elf;
	int compared = 0;

	if (elf_len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64) {
		snprintf(why, why_len, "not an ELF64 file");
		return -1;
	}
	for (int i = 0; i < eh->e_phnum; i++) {
		const Elf64_Phdr *ph = (const void *)(elf + eh->e_phoff + (size_t)i * eh->e_phentsize);

		if ((const unsigned char *)(ph + 1) > elf + elf_len)
			break;
		if (ph->p_type != PT_LOAD || (ph->p_flags & PF_W) || !ph->p_filesz)
			continue;
		if (ph->p_offset + ph->p_filesz > elf_len || ph->p_paddr + ph->p_filesz > mem_len) {
			snprintf(why, why_len, "segment %d outside the file or the memory", i);
			return -1;
		}
		if (memcmp(mem + ph->p_paddr, elf + ph->p_offset, ph->p_filesz)) {
			size_t at = 0;

			while (mem[ph->p_paddr + at] == elf[ph->p_offset + at])
				at++;
			snprintf(why, why_len, "segment %d (%#llx, %llu bytes) differs at +%#zx: %#x in memory, %#x in the file",
				 i, (unsigned long long)ph->p_paddr, (unsigned long long)ph->p_filesz, at,
				 mem[ph->p_paddr + at], elf[ph->p_offset + at]);
			return -1;
		}
		printf("foreign: segment %d: %llu bytes at %#llx as in the file\n", i,
		       (unsigned long long)ph->p_filesz, (unsigned long long)ph->p_paddr);
		compared++;
	}
	return compared;
}

/*
 * Where the hypervisor's StartInfo is in the domain's memory: its magic
 * ("OxenBoot") followed by the ABI version this header has (the guest may hold
 * a copy of the magic alone, on its stack say).
 */
static long find_start_info(const unsigned char *mem, size_t len)
{
	static const char magic[8] = "OxenBoot";
	uint32_t version;

	for (size_t at = 0; at + 304 <= len; at += 8) {
		memcpy(&version, mem + at + 8, 4);
		if (!memcmp(mem + at, magic, 8) && version == OXEN_ABI_VERSION)
			return (long)at;
	}
	return -1;
}

/*
 * A thread on another CPU than the destroyer's reads the mapping all along,
 * keeping its translation in that CPU's TLB: until the hypervisor empties the
 * mapping it reads the domain's word, after that all ones. Anything else (a
 * 0: the frame scrubbed and freed, read through a stale TLB entry) means
 * dom0 reached memory no longer the domain's.
 */
struct reader {
	volatile uint64_t *word;
	uint64_t before;
	int cpu;
	atomic_int stop;
	unsigned long reads, domain, ones, other;
	uint64_t other_value;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	cpu_set_t set;

	CPU_ZERO(&set);
	CPU_SET(r->cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
	while (!atomic_load(&r->stop)) {
		uint64_t v = *r->word;

		r->reads++;
		if (v == r->before) {
			r->domain++;
		} else if (v == ~0ULL) {
			r->ones++;
			usleep(1000);
		} else {
			r->other++;
			r->other_value = v;
		}
	}
	return NULL;
}

static int domain_listed(const char *name)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "oxl list | awk '$1 == \"%s\"' | grep -q .", name);
	return system(cmd) == 0;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s DOMID NAME MEM_MIB KERNEL_ELF CMDLINE_PART\n", argv[0]);
		return 100;
	}
	uint32_t domid = strtoul(argv[1], NULL, 0);
	const char *name = argv[2];
	size_t mem_len = strtoul(argv[3], NULL, 0) << 20;
	char why[256] = "";
	struct sigaction sa = { .sa_handler = on_fault };

	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	oxen_fd = open("/dev/oxen", O_RDWR);
	if (oxen_fd < 0) {
		check("open-dev-oxen", 0, "%s", strerror(errno));
		return failures;
	}

	/* The whole RAM, one mapping. */
	int fd = foreign_open(domid);
	check("foreign-open", fd >= 0, "%s", strerror(errno));
	unsigned char *mem = fmap(fd, mem_len, 0);
	check("map-all-ram", mem != MAP_FAILED, "%zu bytes: %s", mem_len, strerror(errno));
	if (fd < 0 || mem == MAP_FAILED)
		return failures;
	printf("foreign: d%u's %zu MiB mapped at %p\n", domid, mem_len >> 20, (void *)mem);

	/* Its kernel's code and read-only data, as the ELF file has them. */
	size_t elf_len = 0;
	unsigned char *elf = read_file(argv[4], &elf_len);
	int n = elf ? compare_segments(mem, mem_len, elf, elf_len, why, sizeof(why)) : -1;
	if (!elf)
		snprintf(why, sizeof(why), "cannot read %s", argv[4]);
	check("kernel-segments-match-the-elf", n > 0, "%s", n == 0 ? "no read-only segment" : why);

	/* The hypervisor's StartInfo: its size and command line are the config's. */
	long si = find_start_info(mem, mem_len);
	check("start-info-found", si >= 0, "no OxenBoot magic in the domain's memory");
	if (si >= 0) {
		uint64_t bytes;
		const char *cmdline = (const char *)mem + si + 48;

		memcpy(&bytes, mem + si + 16, 8);
		printf("foreign: StartInfo at %#lx: %llu bytes of RAM, cmdline '%.*s'\n", si,
		       (unsigned long long)bytes, 255, cmdline);
		check("start-info-memory", bytes == mem_len, "%llu bytes, config says %zu",
		      (unsigned long long)bytes, mem_len);
		check("start-info-cmdline", strstr(cmdline, argv[5]) != NULL, "'%.*s' lacks '%s'", 255, cmdline, argv[5]);

		/*
		 * A write through a second mapping (its own file, only that page)
		 * is read through the first: the command line's NUL padding (the
		 * guest read its command line at boot), restored afterwards.
		 */
		long page = si & ~(PAGE - 1);
		size_t span = ((si + 304 + PAGE - 1) & ~(PAGE - 1)) - page;
		int fd2 = foreign_open(domid);
		unsigned char *one = fd2 >= 0 ? fmap(fd2, span, page) : MAP_FAILED;
		check("map-its-pages-again", one != MAP_FAILED, "%s", strerror(errno));
		if (one != MAP_FAILED) {
			volatile uint64_t *pad = (volatile uint64_t *)(one + (si - page) + 48 + 256 - 8);
			volatile uint64_t *seen = (volatile uint64_t *)(mem + si + 48 + 256 - 8);
			uint64_t before = *seen;

			*pad = 0x4f78656e2d4d6170ULL;
			check("write-seen-through-another-mapping", before == 0 && *seen == 0x4f78656e2d4d6170ULL,
			      "before %#llx, after %#llx", (unsigned long long)before, (unsigned long long)*seen);
			*pad = 0;
			munmap(one, span);
		}
		if (fd2 >= 0)
			close(fd2);
	}

	/* Refusals: the hypervisor's (through the driver) and the driver's. */
	int e;
	e = map_error(0, PAGE, 0, MAP_SHARED);
	check("dom0-itself-refused", e == EPERM, "%s", e ? strerror(e) : "mapped");
	e = map_error(4000, PAGE, 0, MAP_SHARED);
	check("missing-domain-refused", e == ENOENT, "%s", e ? strerror(e) : "mapped");
	e = map_error(domid, PAGE, mem_len, MAP_SHARED);
	check("page-past-ram-refused", e == EINVAL, "%s", e ? strerror(e) : "mapped");
	e = map_error(domid, 2 * PAGE, mem_len - PAGE, MAP_SHARED);
	check("range-across-the-end-refused", e == EINVAL, "%s", e ? strerror(e) : "mapped");
	e = map_error(domid, (size_t)(OXEN_FOREIGN_MAP_MAX_PAGES + 1) * PAGE, 0, MAP_SHARED);
	check("count-over-the-bound-refused", e == EINVAL, "%s", e ? strerror(e) : "mapped");
	e = map_error(domid, 0, 0, MAP_SHARED);
	check("count-zero-refused", e == EINVAL, "%s", e ? strerror(e) : "mapped");
	e = map_error(domid, PAGE, 0, MAP_PRIVATE);
	check("private-mapping-refused", e == EINVAL, "%s", e ? strerror(e) : "mapped");
	{
		struct oxen_foreign_map raw = { .domid = domid, .count = 1 };
		struct oxen_hypercall hc = { .nr = OXEN_HC_DOMCTL, .cmd = OXEN_DOMCTL_FOREIGN_MAP,
					     .arg = (uintptr_t)&raw, .arg_len = sizeof(raw) };
		int r = ioctl(oxen_fd, OXEN_IOCTL_HYPERCALL, &hc);

		check("raw-foreign-domctl-refused", r < 0 && errno == EPERM, "ioctl gave %d (%s)", r, strerror(errno));
	}
	{
		/* Nor may a raw IOREQ_SETUP name a dom0 page the driver did not allocate. */
		struct oxen_ioreq_setup raw = { .domid = domid, .page = 0x100000 };
		struct oxen_hypercall hc = { .nr = OXEN_HC_DOMCTL, .cmd = OXEN_DOMCTL_IOREQ_SETUP,
					     .arg = (uintptr_t)&raw, .arg_len = sizeof(raw) };
		int r = ioctl(oxen_fd, OXEN_IOCTL_HYPERCALL, &hc);

		check("raw-ioreq-setup-refused", r < 0 && errno == EPERM, "ioctl gave %d (%s)", r, strerror(errno));
	}
	/* Part of a mapping cannot be unmapped (it would split it). */
	{
		int r = munmap(mem + PAGE, PAGE);

		check("partial-munmap-refused", r < 0 && errno == EINVAL, "munmap gave %d (%s)", r, strerror(errno));
	}
	{
		pid_t child = fork();
		int status = 0;

		if (child == 0) {
			int fd3;

			if (setgid(65534) || setuid(65534))
				_exit(3);
			fd3 = open("/dev/oxen", O_RDWR);
			_exit(fd3 >= 0 ? 1 : (errno == EACCES || errno == EPERM) ? 0 : 2);
		}
		waitpid(child, &status, 0);
		check("non-root-cannot-open", WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
	}

	/* Destroyed while mapped. */
	volatile uint64_t *word = (volatile uint64_t *)(mem + si);
	uint64_t v = 0;
	char cmd[128];

	struct reader rd = { .word = word, .before = *word, .cpu = 1 };
	pthread_t reader;
	cpu_set_t set;
	int threads = sysconf(_SC_NPROCESSORS_ONLN) > 1;

	/* The destroyer on CPU 0, the reader on CPU 1 (when dom0 has two). */
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	sched_setaffinity(0, sizeof(set), &set);
	if (threads && pthread_create(&reader, NULL, reader_main, &rd) != 0)
		threads = 0;
	if (threads)
		while (rd.reads < 1000)
			usleep(1000);
	snprintf(cmd, sizeof(cmd), "oxl destroy %s", name);
	check("destroy-while-mapped", system(cmd) == 0, "'%s' failed", cmd);
	for (int i = 0; i < 60 && domain_listed(name); i++)
		sleep(1);
	check("domain-gone", !domain_listed(name), "%s still listed after 60 s", name);
	if (threads) {
		sleep(1);
		atomic_store(&rd.stop, 1);
		pthread_join(reader, NULL);
		printf("foreign: reader on cpu %d: %lu reads: %lu of the domain's word, %lu all ones, %lu other\n",
		       rd.cpu, rd.reads, rd.domain, rd.ones, rd.other);
		check("reader-on-another-cpu-saw-no-freed-memory", rd.other == 0 && rd.ones > 0,
		      "%lu reads of something else (last %#llx), %lu all ones", rd.other,
		      (unsigned long long)rd.other_value, rd.ones);
	} else {
		printf("foreign: dom0 has one CPU: no reader on another\n");
	}
	int sig = touch_read(word, &v);
	if (sig)
		printf("foreign: reading the old mapping: signal %d\n", sig);
	else
		printf("foreign: reading the old mapping: %#llx\n", (unsigned long long)v);
	check("old-mapping-reads-no-domain-bytes", sig == SIGSEGV || sig == SIGBUS || v == ~0ULL,
	      "read %#llx", (unsigned long long)v);
	sig = touch_write(word, 0x1234);
	printf("foreign: writing the old mapping: %s%d\n", sig ? "signal " : "no signal, ", sig);
	sig = touch_read(word, &v);
	check("old-mapping-write-went-nowhere", sig || v == ~0ULL, "read back %#llx", (unsigned long long)v);
	check("unmap-after-destroy", munmap(mem, mem_len) == 0, "%s", strerror(errno));
	close(fd);
	e = map_error(domid, PAGE, 0, MAP_SHARED);
	check("destroyed-domain-refused", e == ENOENT, "%s", e ? strerror(e) : "mapped");
	printf("foreign: %d failure(s)\n", failures);
	return failures;
}
