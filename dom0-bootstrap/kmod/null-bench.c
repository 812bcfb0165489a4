// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-null-bench [N]: what a null hypercall costs dom0's user space through
 * /dev/oxen, as root. Times N ioctls of each kind with RDTSC and prints, one
 * line each:
 *
 *   oxen-null-bench: null N calls D cycles C cycles/call
 *       the ioctl forwarding NULL: system call, the driver's checks, the
 *       VMCALL/VMMCALL round trip through the hypervisor, the result stored;
 *   oxen-null-bench: refused N calls D cycles C cycles/call
 *       the same ioctl refused by the driver (NULL with a command, EINVAL)
 *       after it copied the request in: all of the above but the hypercall;
 *   oxen-null-bench: syscall N calls D cycles C cycles/call
 *       getppid(2), the floor of any system call.
 *
 * "null" minus "refused" is the hypercall's round trip as dom0's kernel sees
 * it. Under QEMU with -icount shift=0 the TSC counts instructions, so the
 * figures are instructions; otherwise they are TSC cycles of whatever runs
 * dom0. C is printed with one decimal.
 *
 * Freestanding like ioctl-test.c (raw system calls, no libc): xtask builds it
 * beside oxen.ko and puts it in dom0's initramfs as /usr/lib/oxen/null-bench;
 * `cargo xtask bench` runs it. Exit status 0, or 1 when a call failed.
 */
#include <linux/errno.h>
#include <linux/fcntl.h>
#include "oxen_abi.h"
#include "freestanding.h"

/* Serialized: LFENCE keeps RDTSC from running ahead of earlier instructions. */
static unsigned long rdtsc(void)
{
	unsigned int lo, hi;

	asm volatile("lfence\n\trdtsc\n\tlfence" : "=a"(lo), "=d"(hi) :: "memory");
	return ((unsigned long)hi << 32) | lo;
}

static int fd;

static long ioctl_hc(struct oxen_hypercall *hc)
{
	return sys3(SYS_ioctl, fd, OXEN_IOCTL_HYPERCALL, (long)hc);
}

enum kind { NULL_CALL, REFUSED, SYSCALL };

/* One call of `kind`; 0 if it did what it should. */
static int one(enum kind kind)
{
	struct oxen_hypercall hc = { .nr = OXEN_HC_NULL };

	switch (kind) {
	case NULL_CALL:
		return ioctl_hc(&hc) != 0 || hc.result != 0;
	case REFUSED:
		hc.cmd = 1;
		return ioctl_hc(&hc) != -EINVAL;
	default:
		return sys3(SYS_getppid, 0, 0, 0) <= 0;
	}
}

static int time_calls(const char *name, enum kind kind, unsigned long n)
{
	unsigned long i, t0, d, bad = 0;

	for (i = 0; i < 100; i++) /* warm caches, TLBs and branch predictors */
		bad += one(kind);
	t0 = rdtsc();
	for (i = 0; i < n; i++)
		bad += one(kind);
	d = rdtsc() - t0;
	put("oxen-null-bench: ");
	put(name);
	put(" ");
	put_u(n);
	put(" calls ");
	put_u(d);
	put(" cycles ");
	put_u(d / n);
	put(".");
	put_u(d * 10 / n % 10);
	put(" cycles/call");
	if (bad) {
		put(" (");
		put_u(bad);
		put(" calls failed)");
	}
	put("\n");
	return bad != 0;
}

static unsigned long parse(const char *s)
{
	unsigned long v = 0;

	while (*s >= '0' && *s <= '9')
		v = v * 10 + (unsigned long)(*s++ - '0');
	return *s ? 0 : v;
}

__attribute__((noreturn, used)) void start(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	unsigned long n = argc > 1 ? parse(argv[1]) : 10000;
	int bad = 0;

	if (!n) {
		put("usage: oxen-null-bench [CALLS]\n");
		sys3(SYS_exit_group, 2, 0, 0);
	}
	fd = (int)sys3(SYS_open, (long)"/dev/" OXEN_DEVICE_NAME, O_RDWR, 0);
	if (fd < 0) {
		put("oxen-null-bench: cannot open /dev/oxen (run as root, in dom0 under Oxen)\n");
		sys3(SYS_exit_group, 1, 0, 0);
	}
	bad |= time_calls("null", NULL_CALL, n);
	bad |= time_calls("refused", REFUSED, n);
	bad |= time_calls("syscall", SYSCALL, n);
	sys3(SYS_exit_group, bad, 0, 0);
	for (;;)
		;
}

/* exec leaves RSP 16-byte aligned at argc; the call keeps the C ABI's alignment. */
asm(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tcall start\n\thlt\n");
