/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * /usr/lib/oxen/tsc in Oxen's Linux domU: prints the time stamp counter and
 * the kernel's monotonic clock in nanoseconds, in decimal on one line. Under
 * QEMU's -icount shift=0 the TSC counts the instructions executed since the
 * machine started (plus virtual time while every CPU idles), and the monotonic
 * clock the same since the kernel started its clock, early in start_kernel:
 * `cargo xtask bench` reads from them how many instructions a boot takes up to
 * the banner (rcS, `oxen.tsc` on the kernel command line). Freestanding (its
 * own _start and system calls), so building it needs only gcc.
 */

#define SYS_write 1
#define SYS_clock_gettime 228
#define SYS_exit_group 231
#define CLOCK_MONOTONIC 1

static long sys2(long nr, long a, long b)
{
	long ret;

	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(nr), "D"(a), "S"(b)
		     : "rcx", "r11", "memory");
	return ret;
}

/* Writes u in decimal ending at *end (exclusive); returns where it starts. */
static char *decimal(char *end, unsigned long u)
{
	do
		*--end = (char)('0' + u % 10);
	while (u /= 10);
	return end;
}

void _start(void)
{
	unsigned int lo, hi;
	struct {
		long sec, nsec;
	} ts = { 0, 0 };
	char buf[48], *p = buf + sizeof(buf);
	long ret;

	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	sys2(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts);
	*--p = '\n';
	p = decimal(p, (unsigned long)ts.sec * 1000000000UL + (unsigned long)ts.nsec);
	*--p = ' ';
	p = decimal(p, ((unsigned long)hi << 32) | lo);
	asm volatile("syscall"
		     : "=a"(ret)
		     : "a"(SYS_write), "D"(1L), "S"(p), "d"(buf + sizeof(buf) - p)
		     : "rcx", "r11", "memory");
	sys2(SYS_exit_group, 0, 0);
	__builtin_unreachable();
}
