// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-xstate-test [SECONDS]: dom0's half of the cross-domain register test
 * (dom0-bootstrap/tests/xstate.sh). Fills XMM0-15 (YMM0-15 when the kernel
 * enabled AVX: CPUID.1:ECX.OSXSAVE and AVX, XCR0 bits 1-2) with a pattern made
 * from its PID, then for SECONDS (default 10) re-reads them again and again
 * while domUs run on the same pCPU; a register that changed is a mismatch
 * (counted, then the pattern is loaded again). Prints one line a second and
 *
 *   xstate-test: done: pid P, AVX|SSE, N checks, M mismatches
 *
 * Exit status 0 when M is 0 and N > 0.
 *
 * Freestanding like ioctl-test.c (raw system calls, no libc), and compiled
 * for general registers only, so nothing but the asm below touches the
 * vector registers.
 */
#pragma GCC target("general-regs-only")

#include "freestanding.h"

#define CLOCK_MONOTONIC 1

typedef unsigned long u64;

static u64 now_ms(void)
{
	struct { long s, ns; } t;

	sys3(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&t, 0);
	return (u64)t.s * 1000 + (u64)t.ns / 1000000;
}

static u64 mix(u64 z)
{
	z += 0x9e3779b97f4a7c15UL;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9UL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebUL;
	return z ^ (z >> 31);
}

/* 16 registers of up to 32 bytes: 64 u64 words. */
static u64 want[64] __attribute__((aligned(32)));
static u64 got[64] __attribute__((aligned(32)));

#define EACH(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) \
	op(8) op(9) op(10) op(11) op(12) op(13) op(14) op(15)
#define LD_X(i) "movdqu " #i "*32(%0), %%xmm" #i "\n\t"
#define ST_X(i) "movdqu %%xmm" #i ", " #i "*32(%0)\n\t"
#define LD_Y(i) "vmovdqu " #i "*32(%0), %%ymm" #i "\n\t"
#define ST_Y(i) "vmovdqu %%ymm" #i ", " #i "*32(%0)\n\t"

static void load(int avx, const u64 *p)
{
	if (avx)
		asm volatile(EACH(LD_Y) : : "r"(p) : "memory");
	else
		asm volatile(EACH(LD_X) : : "r"(p) : "memory");
}

static void store(int avx, u64 *p)
{
	if (avx)
		asm volatile(EACH(ST_Y) : : "r"(p) : "memory");
	else
		asm volatile(EACH(ST_X) : : "r"(p) : "memory");
}

static int avx_enabled(void)
{
	unsigned a, b, c, d, lo, hi;

	asm volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
	/* OSXSAVE (27) and AVX (28). */
	if ((c & (3u << 27)) != (3u << 27))
		return 0;
	asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return (lo & 6) == 6;
}

static int run(long seconds)
{
	int avx = avx_enabled();
	int width = avx ? 4 : 2; /* u64 words a register */
	u64 pid = (u64)sys3(SYS_getpid, 0, 0, 0);
	u64 checks = 0, mismatches = 0, start, next = 1;
	int i, r;

	for (i = 0; i < 64; i++)
		want[i] = mix(pid << 32 | (u64)i);
	put("xstate-test: pid ");
	put_u(pid);
	put(avx ? ", checking YMM0-15\n" : ", checking XMM0-15 (the kernel did not enable AVX)\n");
	load(avx, want);
	start = now_ms();
	for (;;) {
		int bad = 0;

		for (i = 0; i < 1000; i++)
			asm volatile("pause");
		store(avx, got);
		checks++;
		for (r = 0; r < 16; r++)
			for (i = 0; i < width; i++)
				bad |= got[r * 4 + i] != want[r * 4 + i];
		if (bad) {
			mismatches++;
			load(avx, want);
		}
		if (now_ms() - start >= next * 1000) {
			put("xstate-test: ");
			put_u(next);
			put("s: ");
			put_u(checks);
			put(" checks, ");
			put_u(mismatches);
			put(" mismatches\n");
			if (next >= (u64)seconds)
				break;
			next++;
		}
	}
	put("xstate-test: done: pid ");
	put_u(pid);
	put(avx ? ", AVX, " : ", SSE, ");
	put_u(checks);
	put(" checks, ");
	put_u(mismatches);
	put(" mismatches\n");
	return mismatches == 0 && checks > 0 ? 0 : 1;
}

static long parse(const char *s)
{
	long v = 0;

	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	return v > 0 ? v : 10;
}

void __attribute__((used)) start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);

	sys3(SYS_exit_group, run(argc > 1 ? parse(argv[1]) : 10), 0, 0);
}

asm(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start_c\n\thlt\n");
