// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * oxen-ioctl-test: checks /dev/oxen's ioctl from dom0's user space, as root.
 *
 * Freestanding (raw system calls, no libc) so the host needs only gcc to build
 * it: xtask builds it beside oxen.ko and puts it in dom0's initramfs as
 * /usr/lib/oxen/ioctl-test; the dom0-devoxen-svm system test runs it. One line
 * per check, then "oxen-ioctl-test: N passed, M failed"; exit status 0 when
 * none failed. `ioctl-test events` instead waits for console events three
 * times (a domU writing its console must be running) and says how long each
 * took.
 */
#include <linux/errno.h>
#include <linux/fcntl.h>
#include "oxen_abi.h"
#include "freestanding.h"

static void put_num(long v)
{
	if (v < 0)
		put("-");
	put_u(v < 0 ? -(unsigned long)v : (unsigned long)v);
}

static int passed, failed;

static void check(const char *name, int ok, long got, long want)
{
	put("oxen-ioctl-test: ");
	put(ok ? "ok " : "FAIL ");
	put(name);
	if (!ok) {
		put(": got ");
		put_num(got);
		put(", want ");
		put_num(want);
	}
	put("\n");
	if (ok)
		passed++;
	else
		failed++;
}

static int fd;

/* The ioctl's return (0 or -errno, as the raw system call gives it). */
static long hypercall(struct oxen_hypercall *hc)
{
	return sys3(SYS_ioctl, fd, OXEN_IOCTL_HYPERCALL, (long)hc);
}

/* An ioctl that must fail with `err` before the hypervisor is asked. */
static void refused(const char *name, struct oxen_hypercall hc, long err)
{
	long r;

	hc.result = 0x5a5a;
	r = hypercall(&hc);
	check(name, r == -err && hc.result == 0x5a5a, r, -err);
}

static long event_wait(struct oxen_event_wait *w)
{
	return sys3(SYS_ioctl, fd, OXEN_IOCTL_EVENT_WAIT, (long)w);
}

/* CLOCK_MONOTONIC in milliseconds. */
static unsigned long ms_now(void)
{
	long ts[2] = {0, 0};

	sys3(SYS_clock_gettime, 1, (long)ts, 0);
	return (unsigned long)ts[0] * 1000 + (unsigned long)ts[1] / 1000000;
}

/* The event wait's refusals, and a wait with nothing to wake it. */
static void event_checks(void)
{
	struct oxen_event_wait w;
	unsigned long t0, took;
	long r;

	w = (struct oxen_event_wait){ .mask = 0, .timeout_ms = 10 };
	check("EVENT_WAIT for no event is EINVAL", event_wait(&w) == -EINVAL, event_wait(&w), -EINVAL);
	w = (struct oxen_event_wait){ .mask = 1ULL << 40, .timeout_ms = 10 };
	check("EVENT_WAIT for an unknown event is EINVAL", event_wait(&w) == -EINVAL, event_wait(&w), -EINVAL);
	w = (struct oxen_event_wait){ .mask = OXEN_EVENT_CONSOLE, .timeout_ms = 1ULL << 40 };
	check("EVENT_WAIT over an hour is EINVAL", event_wait(&w) == -EINVAL, event_wait(&w), -EINVAL);
	r = sys3(SYS_ioctl, fd, OXEN_IOCTL_EVENT_WAIT, 0x1000);
	check("EVENT_WAIT unmapped is EFAULT", r == -EFAULT, r, -EFAULT);
	/* No domU: the first wait gives the count so far, the next times out on it. */
	w = (struct oxen_event_wait){ .mask = OXEN_EVENT_CONSOLE, .count = ~0ULL, .timeout_ms = 10 };
	r = event_wait(&w);
	check("EVENT_WAIT returns the count so far", r == 0 && w.count != ~0ULL, r, 0);
	t0 = ms_now();
	r = event_wait(&(struct oxen_event_wait){ .mask = OXEN_EVENT_CONSOLE, .count = w.count, .timeout_ms = 300 });
	took = ms_now() - t0;
	check("EVENT_WAIT with nothing happening times out after 300 ms", r == 0 && took >= 290, (long)took, 300);
	refused("hypercall 7 (EVENTS, the driver's own) is EINVAL",
		(struct oxen_hypercall){ .nr = OXEN_HC_EVENTS }, EINVAL);
}

/* poll(2) on /dev/oxen for `ms`: 1 readable, 0 not, or -errno. */
static long poll_in(int ms)
{
	struct { int fd; short events, revents; } p = { fd, 1 /* POLLIN */, 0 };

	return sys3(SYS_poll, (long)&p, 1, ms);
}

/* `events`: three console events, each within 5 s. */
static void events(void)
{
	struct oxen_event_wait w = { .mask = OXEN_EVENT_CONSOLE, .count = ~0ULL, .timeout_ms = 10 };
	unsigned long t0, took, before;
	long r;
	int i;

	r = event_wait(&w);
	check("EVENT_WAIT answers", r == 0, r, 0);
	for (i = 0; i < 3 && r == 0; i++) {
		before = w.count;
		w.timeout_ms = 5000;
		t0 = ms_now();
		r = event_wait(&w);
		took = ms_now() - t0;
		put("oxen-ioctl-test: console event after ");
		put_u(took);
		put(" ms, count ");
		put_u(w.count);
		put("\n");
		check("a domU's console output wakes EVENT_WAIT", r == 0 && w.count != before, r, 0);
	}
	/*
	 * poll(2): the file stays subscribed after its waits. Right after a
	 * look (EVENT_WAIT with no timeout) it is not readable (a tick may fall
	 * in between: three tries), then the next console output makes it so.
	 */
	for (i = 0; i < 3; i++) {
		w.timeout_ms = 0;
		event_wait(&w);
		r = poll_in(0);
		if (r == 0)
			break;
	}
	check("poll: not readable right after a look", r == 0, r, 0);
	t0 = ms_now();
	r = poll_in(5000);
	took = ms_now() - t0;
	put("oxen-ioctl-test: poll readable after ");
	put_u(took);
	put(" ms\n");
	check("poll: a domU's console output makes /dev/oxen readable", r == 1 && took < 5000, r, 1);
}

/* A full DOMCTL buffer, and one byte more for the too-big case. */
static unsigned char big[OXEN_DOMCTL_BUF_MAX + 1];

/* A DOMCTL command no hypervisor has. */
#define NO_SUCH_DOMCTL 0x7fff0000

/* `sp` is the initial stack: argc, then argv. */
__attribute__((noreturn, used)) void start(long *sp)
{
	struct oxen_hypercall hc = {0};
	unsigned char arg[16];
	char **argv = (char **)(sp + 1);
	long r;
	int i, same;

	fd = (int)sys3(SYS_open, (long)"/dev/" OXEN_DEVICE_NAME, O_RDWR, 0);
	check("open /dev/oxen", fd >= 0, fd, 0);
	if (fd < 0)
		goto out;
	if (sp[0] > 1 && argv[1][0] == 'e') {
		events();
		goto out;
	}

	hc.nr = OXEN_HC_VERSION;
	r = hypercall(&hc);
	check("VERSION returns 0", r == 0, r, 0);
	check("VERSION result is ABI 1.x", (hc.result >> 16) == OXEN_ABI_MAJOR,
	      hc.result, OXEN_ABI_VERSION);

	hc = (struct oxen_hypercall){ .nr = OXEN_HC_NULL, .result = 77 };
	r = hypercall(&hc);
	check("NULL returns 0, result 0", r == 0 && hc.result == 0, r ? r : hc.result, 0);

	/* An unknown command: the hypervisor says ENOSYS and writes nothing back. */
	for (i = 0; i < (int)sizeof(arg); i++)
		arg[i] = (unsigned char)(0xa0 + i);
	for (i = 0; i < OXEN_DOMCTL_BUF_MAX; i++)
		big[i] = (unsigned char)(i * 7);
	hc = (struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .cmd = NO_SUCH_DOMCTL,
		.arg = (unsigned long)arg, .arg_len = sizeof(arg),
		.buf = (unsigned long)big, .buf_len = OXEN_DOMCTL_BUF_MAX };
	r = hypercall(&hc);
	check("DOMCTL unknown command fails with ENOSYS", r == -ENOSYS, r, -ENOSYS);
	check("DOMCTL result is -ENOSYS", hc.result == -ENOSYS, hc.result, -ENOSYS);
	same = 1;
	for (i = 0; i < (int)sizeof(arg); i++)
		same &= arg[i] == (unsigned char)(0xa0 + i);
	for (i = 0; i < OXEN_DOMCTL_BUF_MAX; i++)
		same &= big[i] == (unsigned char)(i * 7);
	check("DOMCTL argument and 64 KiB buffer come back unchanged", same, same, 1);

	hc = (struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .cmd = NO_SUCH_DOMCTL };
	r = hypercall(&hc);
	check("DOMCTL without argument or buffer reaches the hypervisor", r == -ENOSYS, r, -ENOSYS);

	refused("hypercall 2 (not forwarded) is EINVAL",
		(struct oxen_hypercall){ .nr = 2 }, EINVAL);
	refused("VERSION with a command is EINVAL",
		(struct oxen_hypercall){ .nr = OXEN_HC_VERSION, .cmd = 1 }, EINVAL);
	refused("NULL with a buffer is EINVAL",
		(struct oxen_hypercall){ .nr = OXEN_HC_NULL, .buf = (unsigned long)big, .buf_len = 1 },
		EINVAL);
	refused("DOMCTL argument over 4 KiB is E2BIG",
		(struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .arg = (unsigned long)big,
					 .arg_len = OXEN_DOMCTL_ARG_MAX + 1 }, E2BIG);
	refused("DOMCTL buffer over 64 KiB is E2BIG",
		(struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .buf = (unsigned long)big,
					 .buf_len = OXEN_DOMCTL_BUF_MAX + 1 }, E2BIG);
	refused("DOMCTL length without pointer is EINVAL",
		(struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .arg_len = 8 }, EINVAL);
	refused("DOMCTL pointer without length is EINVAL",
		(struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .buf = (unsigned long)big }, EINVAL);
	refused("DOMCTL unmapped argument is EFAULT",
		(struct oxen_hypercall){ .nr = OXEN_HC_DOMCTL, .arg = 0x1000, .arg_len = 8 }, EFAULT);

	r = sys3(SYS_ioctl, fd, OXEN_IOCTL_HYPERCALL, 0x1000);
	check("unmapped request is EFAULT", r == -EFAULT, r, -EFAULT);
	r = sys3(SYS_ioctl, fd, OXEN_IOCTL_HYPERCALL + 1, (long)&hc);
	check("unknown ioctl is ENOTTY", r == -ENOTTY, r, -ENOTTY);
	event_checks();

out:
	put("oxen-ioctl-test: ");
	put_num(passed);
	put(" passed, ");
	put_num(failed);
	put(" failed\n");
	sys3(SYS_exit_group, failed ? 1 : 0, 0, 0);
	for (;;)
		;
}

/* exec leaves RSP 16-byte aligned, as the C ABI wants it before a call. */
asm(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tcall start\n\thlt\n");
