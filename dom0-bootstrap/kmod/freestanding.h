/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * What dom0's freestanding test programs (ioctl-test.c, null-bench.c,
 * xstate-test.c) share: raw system calls, the two functions gcc may call for
 * structure copies and initializers, and output to standard output. No libc,
 * so the host needs only gcc and the kernel's user-space headers to build them
 * (xtask/src/kmod.rs). Each program has its own _start.
 */
#ifndef OXEN_FREESTANDING_H
#define OXEN_FREESTANDING_H

typedef unsigned long size_t;

#define SYS_write 1
#define SYS_open 2
#define SYS_poll 7
#define SYS_ioctl 16
#define SYS_getpid 39
#define SYS_getppid 110
#define SYS_clock_gettime 228
#define SYS_exit_group 231

static inline long sys3(long nr, long a, long b, long c)
{
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a), "S"(b), "d"(c)
		     : "rcx", "r11", "memory");
	return ret;
}

void *memset(void *d, int c, size_t n)
{
	unsigned char *p = d;

	while (n--)
		*p++ = (unsigned char)c;
	return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
	unsigned char *p = d;
	const unsigned char *q = s;

	while (n--)
		*p++ = *q++;
	return d;
}

static inline size_t len(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}

static inline void put(const char *s)
{
	sys3(SYS_write, 1, (long)s, (long)len(s));
}

/* An unsigned number in decimal. */
static inline void put_u(unsigned long u)
{
	char buf[24], *p = buf + sizeof(buf) - 1;

	*p = 0;
	do
		*--p = (char)('0' + u % 10);
	while (u /= 10);
	put(p);
}

#endif
