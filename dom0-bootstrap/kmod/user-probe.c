// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-user-probe [N [SEED]]: a hostile dom0 *user-space* process (issue 9,
 * item 10). Runs, as an ordinary unprivileged process, every instruction an
 * unprivileged process must not be able to use to reach or stop the
 * hypervisor, each under a SIGILL/SIGSEGV/SIGBUS handler, and checks that it
 * gets the signal a bare CPU gives a CPL 3 process:
 *
 *   VMX instructions (VMXON ... VMFUNC), SVM instructions (VMRUN ... INVLPGA)
 *       #UD -> SIGILL, as on a CPU without those extensions (Linux leaves
 *       CR4.VMXE and EFER.SVME clear): SDM Vol. 3C §31.3 (each VMX instruction
 *       raises #UD outside VMX operation), APM Vol. 3 (SVM instructions: #UD
 *       with EFER.SVME clear);
 *   INVD, WBINVD, MOV to/from CR8, XSETBV, RDPMC (CR4.PCE clear)
 *       #GP(0) -> SIGSEGV at CPL 3 (XSETBV: #UD -> SIGILL when the kernel left
 *       CR4.OSXSAVE clear, as Linux does on Bochs' Skylake-X);
 *   MONITOR, MWAIT
 *       #UD -> SIGILL at CPL 3 (SDM Vol. 2B MONITOR/MWAIT; APM: MONITOR at CPL 3
 *       only with MonMwaitUserEn);
 *   the other vendor's hypercall instruction (VMMCALL on Intel, VMCALL on AMD)
 *       #UD -> SIGILL;
 *   the running vendor's (VMCALL on Intel, VMMCALL on AMD)
 *       docs/hypercalls.md: from CPL > 0 the hypervisor returns -EPERM in RAX
 *       and preserves every other register, no signal.
 * The two hypercall instructions run N times each (default 300) with every
 * general-purpose register but RSP random (xorshift, SEED from the TSC unless
 * given).
 *
 * Output: one line per probe,
 *   probe: <insn>: <what happened> (expected <what>) ok|UNEXPECTED
 * then "probe: summary: N probes, M unexpected". Exit status 0 when none was
 * unexpected, 1 otherwise. Run as root it first drops to uid/gid 65534
 * (nobody), so nothing here depends on privilege.
 *
 * Static glibc (for sigsetjmp/siglongjmp and printf): xtask builds it beside
 * oxen.ko (xtask/src/kmod.rs) and puts it in dom0's initramfs as
 * /usr/lib/oxen/user-probe; dom0-bootstrap/tests/hostile-user.sh runs it.
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <grp.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Operands for the instructions that take a memory operand: a zeroed,
 * page-aligned buffer of this process's own. */
static uint8_t page[4096] __attribute__((aligned(4096)));

static sigjmp_buf resume;
static volatile sig_atomic_t caught;

static void on_signal(int sig)
{
	caught = sig;
	siglongjmp(resume, 1);
}

/* Runs fn; returns 0 if it returned, else the signal it took. */
static int attempt(void (*fn)(void))
{
	caught = 0;
	if (sigsetjmp(resume, 1) == 0) {
		fn();
		return 0;
	}
	return caught;
}

static const char *signame(int sig)
{
	switch (sig) {
	case 0:
		return "completed";
	case SIGILL:
		return "SIGILL";
	case SIGSEGV:
		return "SIGSEGV";
	case SIGBUS:
		return "SIGBUS";
	case SIGTRAP:
		return "SIGTRAP";
	case SIGFPE:
		return "SIGFPE";
	default:
		return "another signal";
	}
}

static unsigned probes, unexpected;

static void verdict(int ok)
{
	probes++;
	if (!ok)
		unexpected++;
	printf(" %s\n", ok ? "ok" : "UNEXPECTED");
	fflush(stdout);
}

static void report(const char *insn, int got, int expected)
{
	printf("probe: %s: %s (expected %s)", insn, signame(got), signame(expected));
	verdict(got == expected);
}

/* The instructions, one function each; operands harmless should one ever
 * complete (the process's own buffer, register forms, zero ASIDs). */
#define PROBE(name, ...)                                                       \
	static __attribute__((noinline)) void name(void)                       \
	{                                                                      \
		__VA_ARGS__;                                                        \
	}

/* VMX: SDM Vol. 3C chapter 31. */
PROBE(p_vmxon, asm volatile("vmxon %0" ::"m"(*(uint64_t *)page) : "memory", "cc"))
PROBE(p_vmxoff, asm volatile("vmxoff" ::: "memory", "cc"))
PROBE(p_vmclear, asm volatile("vmclear %0" ::"m"(*(uint64_t *)page) : "memory", "cc"))
PROBE(p_vmptrld, asm volatile("vmptrld %0" ::"m"(*(uint64_t *)page) : "memory", "cc"))
PROBE(p_vmptrst, asm volatile("vmptrst %0" : "=m"(*(uint64_t *)page)::"memory", "cc"))
PROBE(p_vmlaunch, asm volatile("vmlaunch" ::: "memory", "cc"))
PROBE(p_vmresume, asm volatile("vmresume" ::: "memory", "cc"))
PROBE(p_vmread, uint64_t v; asm volatile("vmread %1, %0" : "=r"(v) : "r"(0x6c00ul) : "cc"); (void)v)
PROBE(p_vmwrite, asm volatile("vmwrite %1, %0" ::"r"(0x6c00ul), "r"(0ul) : "cc"))
PROBE(p_invept, asm volatile("invept %0, %1" ::"m"(*(uint8_t(*)[16])page), "r"(2ul) : "memory", "cc"))
PROBE(p_invvpid, asm volatile("invvpid %0, %1" ::"m"(*(uint8_t(*)[16])page), "r"(2ul) : "memory", "cc"))
PROBE(p_vmfunc, asm volatile("vmfunc" ::"a"(0), "c"(0) : "memory", "cc"))
/* SVM: APM Vol. 3, "VMRUN" ... "INVLPGA". VMRUN, VMLOAD and VMSAVE take a
 * physical address: one with no memory behind it (60 GiB). */
#define NO_MEMORY 0xf00000000ul
PROBE(p_vmrun, asm volatile("vmrun" ::"a"(NO_MEMORY) : "memory", "cc"))
PROBE(p_vmload, asm volatile("vmload" ::"a"(NO_MEMORY) : "memory", "cc"))
PROBE(p_vmsave, asm volatile("vmsave" ::"a"(NO_MEMORY) : "memory", "cc"))
PROBE(p_stgi, asm volatile("stgi" ::: "memory", "cc"))
PROBE(p_clgi, asm volatile("clgi" ::: "memory", "cc"))
PROBE(p_skinit, asm volatile("skinit" ::"a"(0u) : "memory", "cc"))
PROBE(p_invlpga, asm volatile("invlpga" ::"a"(page), "c"(0u) : "memory", "cc"))
/* Privileged at CPL 3. */
PROBE(p_invd, asm volatile("invd" ::: "memory"))
PROBE(p_wbinvd, asm volatile("wbinvd" ::: "memory"))
PROBE(p_mov_to_cr8, asm volatile("mov %0, %%cr8" ::"r"(15ul) : "memory"))
PROBE(p_mov_from_cr8, uint64_t v; asm volatile("mov %%cr8, %0" : "=r"(v)::"memory"); (void)v)
PROBE(p_rdpmc, uint32_t a, d; asm volatile("rdpmc" : "=a"(a), "=d"(d) : "c"(0u)); (void)a; (void)d)
PROBE(p_monitor, asm volatile("monitor" ::"a"(page), "c"(0u), "d"(0u) : "memory"))
PROBE(p_mwait, asm volatile("mwait" ::"a"(0u), "c"(0u) : "memory"))

/* XCR0 as the kernel set it (XGETBV needs CR4.OSXSAVE), written back
 * unchanged: the most harmless XSETBV there is. */
static uint32_t xcr0_lo, xcr0_hi;
PROBE(p_xsetbv, asm volatile("xsetbv" ::"a"(xcr0_lo), "d"(xcr0_hi), "c"(0u) : "memory"))

/*
 * A hypercall instruction with every general-purpose register but RSP taken
 * from regs[] and stored back into it afterwards (RAX, RBX, RCX, RDX, RSI,
 * RDI, RBP, R8 ... R15: 15 registers). If the instruction faults, siglongjmp
 * restores what the C caller relies on (RSP and the callee-saved registers).
 */
enum { NREGS = 15, R_RAX = 0, R_RDI = 5 };
static const char *const regname[NREGS] = {
	"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8",
	"r9",  "r10", "r11", "r12", "r13", "r14", "r15",
};

#define HYPERCALL_STUB(name, insn)                                             \
	".globl " #name "\n" #name ":\n"                                       \
	"push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n" \
	"push %rdi\n"                                                          \
	"mov 0(%rdi), %rax\n mov 8(%rdi), %rbx\n mov 16(%rdi), %rcx\n"         \
	"mov 24(%rdi), %rdx\n mov 32(%rdi), %rsi\n mov 48(%rdi), %rbp\n"       \
	"mov 56(%rdi), %r8\n mov 64(%rdi), %r9\n mov 72(%rdi), %r10\n"         \
	"mov 80(%rdi), %r11\n mov 88(%rdi), %r12\n mov 96(%rdi), %r13\n"       \
	"mov 104(%rdi), %r14\n mov 112(%rdi), %r15\n mov 40(%rdi), %rdi\n"     \
	insn "\n"                                                              \
	"xchg %rdi, (%rsp)\n"                                                  \
	"mov %rax, 0(%rdi)\n mov %rbx, 8(%rdi)\n mov %rcx, 16(%rdi)\n"         \
	"mov %rdx, 24(%rdi)\n mov %rsi, 32(%rdi)\n mov %rbp, 48(%rdi)\n"       \
	"mov %r8, 56(%rdi)\n mov %r9, 64(%rdi)\n mov %r10, 72(%rdi)\n"         \
	"mov %r11, 80(%rdi)\n mov %r12, 88(%rdi)\n mov %r13, 96(%rdi)\n"       \
	"mov %r14, 104(%rdi)\n mov %r15, 112(%rdi)\n"                          \
	"pop %rax\n mov %rax, 40(%rdi)\n"                                      \
	"pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n"    \
	"ret\n"

asm(".text\n" HYPERCALL_STUB(hc_vmcall, "vmcall") HYPERCALL_STUB(hc_vmmcall, "vmmcall"));
void hc_vmcall(uint64_t regs[NREGS]);
void hc_vmmcall(uint64_t regs[NREGS]);

static uint64_t rng;
static uint64_t next(void)
{
	/* xorshift64* (Vigna). */
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static uint64_t hc_regs[NREGS];
static void (*hc_stub)(uint64_t *);
static __attribute__((noinline)) void p_hypercall(void)
{
	hc_stub(hc_regs);
}

/*
 * n calls of `stub` with random registers. own: it is this vendor's hypercall
 * instruction, so each call must return RAX = -EPERM (-1) with the other 14
 * registers unchanged; otherwise each must raise SIGILL.
 */
static void hypercalls(const char *insn, void (*stub)(uint64_t *), int own, unsigned n)
{
	unsigned sig_ok = 0, eperm = 0, intact = 0, signalled = 0, shown = 0;

	hc_stub = stub;
	for (unsigned i = 0; i < n; i++) {
		uint64_t in[NREGS];

		for (int r = 0; r < NREGS; r++)
			in[r] = hc_regs[r] = next();
		int sig = attempt(p_hypercall);
		if (own) {
			int same = 1;

			if (sig != 0) {
				if (signalled++ == 0)
					printf("probe: %s call %u: %s\n", insn, i, signame(sig));
				continue;
			}
			if (hc_regs[R_RAX] == (uint64_t)-1)
				eperm++;
			for (int r = 1; r < NREGS; r++)
				same &= hc_regs[r] == in[r];
			intact += same;
			if ((hc_regs[R_RAX] != (uint64_t)-1 || !same) && shown < 3) {
				shown++;
				printf("probe: %s call %u: rax %#lx -> %#lx", insn, i,
				       (unsigned long)in[R_RAX], (unsigned long)hc_regs[R_RAX]);
				for (int r = 1; r < NREGS; r++)
					if (hc_regs[r] != in[r])
						printf(", %s %#lx -> %#lx", regname[r],
						       (unsigned long)in[r], (unsigned long)hc_regs[r]);
				printf("\n");
			}
		} else {
			sig_ok += sig == SIGILL;
			if (sig != SIGILL && shown < 3) {
				shown++;
				printf("probe: %s call %u: %s\n", insn, i, signame(sig));
			}
		}
	}
	if (own) {
		printf("probe: %s x%u, random registers: %u returned -EPERM, %u kept every other register, %u signalled "
		       "(expected all %u -EPERM with registers kept, no signal)",
		       insn, n, eperm, intact, signalled, n);
		verdict(eperm == n && intact == n && signalled == 0);
	} else {
		printf("probe: %s x%u, random registers: %u SIGILL (expected all %u SIGILL)", insn, n, sig_ok, n);
		verdict(sig_ok == n);
	}
}

static void drop_privileges(void)
{
	if (getuid() != 0 && geteuid() != 0)
		return;
	if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) {
		perror("probe: dropping to uid 65534");
		exit(2);
	}
	if (getuid() == 0 || geteuid() == 0) {
		printf("probe: still root after setuid(65534)\n");
		exit(2);
	}
}

int main(int argc, char **argv)
{
	unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 0) : 300;
	unsigned a, b, c, d;
	char vendor[13] = { 0 };
	struct sigaction sa;

	setvbuf(stdout, NULL, _IOLBF, 0);
	drop_privileges();

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGILL, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGTRAP, &sa, NULL);
	sigaction(SIGFPE, &sa, NULL);

	__cpuid(0, a, b, c, d);
	memcpy(vendor, &b, 4);
	memcpy(vendor + 4, &d, 4);
	memcpy(vendor + 8, &c, 4);
	int amd = !strcmp(vendor, "AuthenticAMD") || !strcmp(vendor, "HygonGenuine");
	__cpuid(1, a, b, c, d);
	int osxsave = (c >> 27) & 1;
	if (osxsave)
		asm volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0u));
	else
		xcr0_lo = 1;

	uint32_t lo, hi;
	asm volatile("rdtsc" : "=a"(lo), "=d"(hi));
	rng = argc > 2 ? strtoull(argv[2], NULL, 0) : ((uint64_t)hi << 32 | lo);
	if (rng == 0)
		rng = 1;

	printf("probe: pid %d, uid %d, vendor %s (hypercalls use %s), CR4.OSXSAVE %d, seed %#lx\n",
	       (int)getpid(), (int)getuid(), vendor, amd ? "vmmcall" : "vmcall", osxsave,
	       (unsigned long)rng);

	/* VMXOFF first: the instruction that halted the host (issue 9). */
	static const struct {
		const char *name;
		void (*fn)(void);
		int expected;
	} table[] = {
		{ "vmxoff", p_vmxoff, SIGILL },
		{ "vmxon", p_vmxon, SIGILL },
		{ "vmclear", p_vmclear, SIGILL },
		{ "vmptrld", p_vmptrld, SIGILL },
		{ "vmptrst", p_vmptrst, SIGILL },
		{ "vmlaunch", p_vmlaunch, SIGILL },
		{ "vmresume", p_vmresume, SIGILL },
		{ "vmread", p_vmread, SIGILL },
		{ "vmwrite", p_vmwrite, SIGILL },
		{ "invept", p_invept, SIGILL },
		{ "invvpid", p_invvpid, SIGILL },
		{ "vmfunc", p_vmfunc, SIGILL },
		{ "vmrun", p_vmrun, SIGILL },
		{ "vmload", p_vmload, SIGILL },
		{ "vmsave", p_vmsave, SIGILL },
		{ "stgi", p_stgi, SIGILL },
		{ "clgi", p_clgi, SIGILL },
		{ "skinit", p_skinit, SIGILL },
		{ "invlpga", p_invlpga, SIGILL },
		{ "invd", p_invd, SIGSEGV },
		{ "wbinvd", p_wbinvd, SIGSEGV },
		{ "mov to cr8", p_mov_to_cr8, SIGSEGV },
		{ "mov from cr8", p_mov_from_cr8, SIGSEGV },
		{ "rdpmc", p_rdpmc, SIGSEGV },
		{ "monitor", p_monitor, SIGILL },
		{ "mwait", p_mwait, SIGILL },
		{ "xsetbv", p_xsetbv, 0 },
	};
	for (unsigned i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		int expected = table[i].expected;

		if (table[i].fn == p_xsetbv)
			expected = osxsave ? SIGSEGV : SIGILL;
		report(table[i].name, attempt(table[i].fn), expected);
	}
	hypercalls("vmcall", hc_vmcall, !amd, n);
	hypercalls("vmmcall", hc_vmmcall, amd, n);

	printf("probe: summary: %u probes, %u unexpected\n", probes, unexpected);
	return unexpected ? 1 : 0;
}
