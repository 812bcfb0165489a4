// SPDX-License-Identifier: (GPL-2.0 OR MIT)
/*
 * /dev/oxen: dom0's door to the Oxen hypervisor.
 *
 * OXEN_IOCTL_HYPERCALL makes one hypercall for a CAP_SYS_ADMIN caller;
 * OXEN_IOCTL_FOREIGN_OPEN gives a file whose mmap shows a domU's memory;
 * OXEN_IOCTL_EVENT_WAIT sleeps until the hypervisor signals an event on
 * dom0's event line (below). The driver only moves bytes: it copies the caller's argument
 * structure and data buffer into physically contiguous kernel buffers, passes
 * their physical addresses (dom0 is identity mapped, so guest-physical is
 * host-physical) and lengths to the hypervisor, which validates everything,
 * and copies both back. The ABI is hypervisor/abi/src/lib.rs, mirrored in
 * oxen_abi.h; docs/hypercalls.md is its prose form.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/acpi.h>
#include <linux/anon_inodes.h>
#include <linux/mm.h>
#include <linux/atomic.h>
#include <linux/build_bug.h>
#include <linux/capability.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/poll.h>
#include <linux/slab.h>
#include <linux/stddef.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/wait.h>
#include <asm/processor.h>

#include "oxen_abi.h"

/* The header's layout is HypercallIoctl's: seven 64-bit fields, no padding. */
static_assert(sizeof(struct oxen_hypercall) == 7 * sizeof(__u64));
static_assert(offsetof(struct oxen_hypercall, result) == 6 * sizeof(__u64));
static_assert(sizeof(struct oxen_event_wait) == 3 * sizeof(__u64));
static_assert(sizeof(struct oxen_foreign_map) == 4 * sizeof(__u64));
static_assert(sizeof(struct oxen_foreign_unmap) == 2 * sizeof(__u64));
static_assert(sizeof(struct oxen_foreign_open) == sizeof(__u64));

/* CPUID.1:ECX bit 31: a hypervisor is present. */
#define CPUID_1_ECX_HYPERVISOR BIT(31)
/* The signature fills EBX, ECX and EDX. */
static_assert(sizeof(OXEN_CPUID_SIGNATURE) - 1 == 3 * sizeof(u32));

/* Set once at load: AMD and Hygon use VMMCALL, Intel (and VIA/Zhaoxin) VMCALL. */
static bool oxen_use_vmmcall;

/*
 * One hypercall: number in RAX, arguments in RDI, RSI, RDX, R10, R8, result in
 * RAX. The hypervisor preserves every other register; "memory" because it
 * writes results into the buffers whose addresses it was given.
 */
static unsigned long oxen_hypercall(unsigned long nr, unsigned long a1,
				    unsigned long a2, unsigned long a3,
				    unsigned long a4, unsigned long a5)
{
	register unsigned long r10 asm("r10") = a4;
	register unsigned long r8 asm("r8") = a5;
	unsigned long ret;

	if (oxen_use_vmmcall)
		asm volatile("vmmcall"
			     : "=a"(ret)
			     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8)
			     : "memory");
	else
		asm volatile("vmcall"
			     : "=a"(ret)
			     : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8)
			     : "memory");
	return ret;
}

/*
 * A hypercall result as the ioctl's return value: 0 for success (the caller
 * reads the value from `result`), the negated errno for a failure. Errno
 * values from 512 up are the kernel's own (-ERESTARTSYS would restart the
 * system call): a hypervisor never means those, so they become -EIO.
 */
static long oxen_result_to_errno(unsigned long rax)
{
	long err = (long)rax;

	if (!IS_ERR_VALUE(rax))
		return 0;
	return err > -ERESTARTSYS ? err : -EIO;
}

/*
 * An open /dev/oxen: the events it waited for (it stays subscribed to them
 * until it is closed, so poll(2) can watch them between waits) and their
 * count when it last looked (what poll compares with); and the buffer its
 * hypercalls' data areas are copied into, kept from one call to the next.
 */
struct oxen_file {
	struct mutex lock;
	u64 mask;
	u64 seen;
	/*
	 * OXEN_DOMCTL_BUF_MAX bytes, allocated at the first call that needs
	 * it; held by one call at a time (`bounce_lock`, a call that finds it
	 * held allocates its own). A fresh order-4 allocation per call made
	 * loading a domU's 40 MB of kernel and initramfs take 14 s under Bochs,
	 * 13 of them in dom0 around the hypervisor's 1.
	 */
	struct mutex bounce_lock;
	void *bounce;
};

/* A kernel copy of one of the caller's areas. */
struct oxen_bounce {
	void *kbuf;
	void __user *ubuf;
	size_t len;
	/* kbuf is the file's own buffer: unlocked, not freed, at the end. */
	struct oxen_file *owner;
};

/*
 * Copies the caller's area in. An absent area (0/0) stays NULL with phys 0.
 * The copy is zeroed first so nothing of the kernel's can reach the caller
 * whatever the hypervisor writes back.
 */
static int oxen_bounce_in(struct oxen_bounce *b, u64 uaddr, u64 len)
{
	b->ubuf = u64_to_user_ptr(uaddr);
	b->len = len;
	if (!len)
		return 0;
	/*
	 * kmalloc memory is physically contiguous, as the hypervisor expects. A
	 * 64 KiB buffer is an order-4 allocation: try hard, but when memory is
	 * too fragmented fail quietly with -ENOMEM (the caller can send less).
	 */
	b->kbuf = kzalloc(len, GFP_KERNEL | __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
	if (!b->kbuf)
		return -ENOMEM;
	if (copy_from_user(b->kbuf, b->ubuf, len))
		return -EFAULT;
	return 0;
}

/*
 * As oxen_bounce_in, into the file's own buffer when no other call holds it.
 * It is not zeroed: a successful copy_from_user fills all `len` bytes the
 * hypervisor sees and the caller gets back, so what it held before (this
 * file's earlier data) cannot show.
 */
static int oxen_bounce_in_file(struct oxen_bounce *b, struct oxen_file *f, u64 uaddr, u64 len)
{
	if (!len || len > OXEN_DOMCTL_BUF_MAX || !mutex_trylock(&f->bounce_lock))
		return oxen_bounce_in(b, uaddr, len);
	if (!f->bounce)
		f->bounce = kmalloc(OXEN_DOMCTL_BUF_MAX, GFP_KERNEL | __GFP_RETRY_MAYFAIL | __GFP_NOWARN);
	if (!f->bounce) {
		mutex_unlock(&f->bounce_lock);
		return oxen_bounce_in(b, uaddr, len);
	}
	b->ubuf = u64_to_user_ptr(uaddr);
	b->len = len;
	b->kbuf = f->bounce;
	b->owner = f;
	if (copy_from_user(b->kbuf, b->ubuf, len))
		return -EFAULT;
	return 0;
}

static void oxen_bounce_end(struct oxen_bounce *b)
{
	if (b->owner)
		mutex_unlock(&b->owner->bounce_lock);
	else
		kfree(b->kbuf);
}

static int oxen_bounce_out(const struct oxen_bounce *b)
{
	if (b->len && copy_to_user(b->ubuf, b->kbuf, b->len))
		return -EFAULT;
	return 0;
}

static unsigned long oxen_bounce_phys(const struct oxen_bounce *b)
{
	return b->kbuf ? virt_to_phys(b->kbuf) : 0;
}

/* An area is absent (0/0) or present (both non-zero); `max` bounds its length. */
static int oxen_check_area(u64 uaddr, u64 len, u64 max)
{
	if (len > max)
		return -E2BIG;
	if (!uaddr != !len)
		return -EINVAL;
	return 0;
}

/*
 * Which requests are forwarded: VERSION and NULL take nothing, so anything
 * else set in the request is a caller's mistake; DOMCTL's command and areas
 * are the hypervisor's to judge, within the ABI's size limits.
 */
static int oxen_check_request(const struct oxen_hypercall *hc)
{
	int err;

	switch (hc->nr) {
	case OXEN_HC_VERSION:
	case OXEN_HC_NULL:
		if (hc->cmd || hc->arg || hc->arg_len || hc->buf || hc->buf_len)
			return -EINVAL;
		return 0;
	case OXEN_HC_DOMCTL:
		/*
		 * Foreign mappings are made and ended only through a foreign
		 * file's mmap and munmap (below), so each is tied to the VMA
		 * that shows it: a raw unmap could free a window range another
		 * process still maps, and a later mapping would appear there.
		 * Likewise an I/O request page is only ever one the driver
		 * allocated for an ioreq file: a raw IOREQ_SETUP would have the
		 * hypervisor write into whatever dom0 page it named.
		 */
		if (hc->cmd == OXEN_DOMCTL_FOREIGN_MAP || hc->cmd == OXEN_DOMCTL_FOREIGN_UNMAP ||
		    hc->cmd == OXEN_DOMCTL_IOREQ_SETUP)
			return -EPERM;
		err = oxen_check_area(hc->arg, hc->arg_len, OXEN_DOMCTL_ARG_MAX);
		if (err)
			return err;
		return oxen_check_area(hc->buf, hc->buf_len, OXEN_DOMCTL_BUF_MAX);
	default:
		return -EINVAL;
	}
}

/* A DOMCTL whose buffer the hypervisor only reads: nothing to copy back. */
static bool oxen_buffer_in_only(const struct oxen_hypercall *hc)
{
	return hc->nr == OXEN_HC_DOMCTL && hc->cmd < 64 &&
	       (OXEN_DOMCTL_BUFFER_IN_ONLY_MASK & BIT_ULL(hc->cmd));
}

static long oxen_ioctl_hypercall(struct oxen_file *f, struct oxen_hypercall __user *uhc)
{
	struct oxen_bounce arg = {}, buf = {};
	struct oxen_hypercall hc;
	unsigned long rax;
	long ret;

	if (copy_from_user(&hc, uhc, sizeof(hc)))
		return -EFAULT;
	ret = oxen_check_request(&hc);
	if (ret)
		return ret;

	ret = oxen_bounce_in(&arg, hc.arg, hc.arg_len);
	if (ret)
		goto out;
	ret = oxen_bounce_in_file(&buf, f, hc.buf, hc.buf_len);
	if (ret)
		goto out;

	rax = oxen_hypercall(hc.nr, hc.cmd, oxen_bounce_phys(&arg), arg.len,
			     oxen_bounce_phys(&buf), buf.len);

	ret = oxen_bounce_out(&arg);
	if (ret)
		goto out;
	if (!oxen_buffer_in_only(&hc)) {
		ret = oxen_bounce_out(&buf);
		if (ret)
			goto out;
	}
	if (put_user((__s64)rax, &uhc->result)) {
		ret = -EFAULT;
		goto out;
	}
	ret = oxen_result_to_errno(rax);
out:
	oxen_bounce_end(&buf);
	oxen_bounce_end(&arg);
	return ret;
}

/*
 * dom0's event line (ABI 1.5): the hypervisor raises GSI OXEN_EVENT_GSI while
 * an event the driver asked for is pending; the handler takes them with the
 * EVENTS hypercall (which lowers the line), counts them per bit and wakes
 * whoever waits in OXEN_IOCTL_EVENT_WAIT. The driver asks only for the events
 * someone waits for (an open file that waited for one keeps it asked for
 * until it is closed, so poll(2) can watch it), so an idle dom0 takes no
 * interrupts for them.
 */
#define OXEN_EVENT_COUNT 2
static_assert(OXEN_EVENT_ALL == (1ULL << OXEN_EVENT_COUNT) - 1);

static int oxen_event_irq = -1;
static DECLARE_WAIT_QUEUE_HEAD(oxen_event_wq);
static atomic64_t oxen_event_counts[OXEN_EVENT_COUNT];
static atomic_t oxen_event_waiters[OXEN_EVENT_COUNT];
/* One EVENTS call at a time, so "wanted" is never set from a stale reading. */
static DEFINE_SPINLOCK(oxen_event_lock);

static u64 oxen_events_wanted(void)
{
	u64 want = 0;
	int i;

	for (i = 0; i < OXEN_EVENT_COUNT; i++)
		if (atomic_read(&oxen_event_waiters[i]))
			want |= BIT_ULL(i);
	return want;
}

/* Takes the pending events, telling the hypervisor what is wanted now. */
static void oxen_events_take(void)
{
	unsigned long flags, rax;
	u64 bits;
	int i;

	spin_lock_irqsave(&oxen_event_lock, flags);
	rax = oxen_hypercall(OXEN_HC_EVENTS, oxen_events_wanted(), 0, 0, 0, 0);
	spin_unlock_irqrestore(&oxen_event_lock, flags);
	if (IS_ERR_VALUE(rax))
		return;
	bits = rax & OXEN_EVENT_ALL;
	for (i = 0; i < OXEN_EVENT_COUNT; i++)
		if (bits & BIT_ULL(i))
			atomic64_inc(&oxen_event_counts[i]);
	if (bits)
		wake_up_all(&oxen_event_wq);
}

/*
 * Always handled: the line is the driver's alone, and EVENTS has lowered it
 * (another CPU's EVENTS may have taken the bits first).
 */
static irqreturn_t oxen_event_handler(int irq, void *dev_id)
{
	oxen_events_take();
	return IRQ_HANDLED;
}

static u64 oxen_event_count(u64 mask)
{
	u64 n = 0;
	int i;

	for (i = 0; i < OXEN_EVENT_COUNT; i++)
		if (mask & BIT_ULL(i))
			n += atomic64_read(&oxen_event_counts[i]);
	return n;
}

/* At most an hour per wait; the caller loops for longer. */
#define OXEN_EVENT_WAIT_MAX_MS (3600 * 1000)

static long oxen_ioctl_event_wait(struct oxen_file *f, struct oxen_event_wait __user *uw)
{
	struct oxen_event_wait w;
	u64 added;
	long left;
	int i;

	if (oxen_event_irq < 0)
		return -ENODEV;
	if (copy_from_user(&w, uw, sizeof(w)))
		return -EFAULT;
	if (!w.mask || (w.mask & ~(u64)OXEN_EVENT_ALL) || w.timeout_ms > OXEN_EVENT_WAIT_MAX_MS)
		return -EINVAL;
	mutex_lock(&f->lock);
	added = w.mask & ~f->mask;
	f->mask |= w.mask;
	mutex_unlock(&f->lock);
	for (i = 0; i < OXEN_EVENT_COUNT; i++)
		if (added & BIT_ULL(i))
			atomic_inc(&oxen_event_waiters[i]);
	/* Asks for them, and counts any that came while nobody asked. */
	oxen_events_take();
	left = wait_event_interruptible_timeout(oxen_event_wq,
						oxen_event_count(w.mask) != w.count,
						msecs_to_jiffies(w.timeout_ms));
	if (left < 0)
		return left;
	mutex_lock(&f->lock);
	f->seen = oxen_event_count(f->mask);
	mutex_unlock(&f->lock);
	if (put_user(oxen_event_count(w.mask), &uw->count))
		return -EFAULT;
	return 0;
}

/* Readable once an event it waited for came after its last EVENT_WAIT. */
static __poll_t oxen_poll(struct file *file, poll_table *wait)
{
	struct oxen_file *f = file->private_data;
	__poll_t ready;

	poll_wait(file, &oxen_event_wq, wait);
	mutex_lock(&f->lock);
	ready = f->mask && oxen_event_count(f->mask) != f->seen ? EPOLLIN | EPOLLRDNORM : 0;
	mutex_unlock(&f->lock);
	return ready;
}

/* Hooks the event line up when the hypervisor has one (ABI 1.5). */
static void oxen_events_init(unsigned int minor)
{
	int irq, err;

	if (minor < 5) {
		pr_info("hypervisor ABI 1.%u has no event line: tools poll\n", minor);
		return;
	}
	irq = acpi_register_gsi(NULL, OXEN_EVENT_GSI, ACPI_LEVEL_SENSITIVE, ACPI_ACTIVE_HIGH);
	if (irq < 0) {
		pr_warn("cannot map GSI %u for the event line (%d): tools poll\n", OXEN_EVENT_GSI, irq);
		return;
	}
	err = request_irq(irq, oxen_event_handler, 0, "oxen-events", NULL);
	if (err) {
		pr_warn("cannot take IRQ %d for the event line (%d): tools poll\n", irq, err);
		acpi_unregister_gsi(OXEN_EVENT_GSI);
		return;
	}
	oxen_event_irq = irq;
	pr_info("events on GSI %u (IRQ %d)\n", OXEN_EVENT_GSI, irq);
}

static void oxen_events_exit(void)
{
	if (oxen_event_irq < 0)
		return;
	free_irq(oxen_event_irq, NULL);
	acpi_unregister_gsi(OXEN_EVENT_GSI);
	oxen_event_irq = -1;
}

/*
 * I/O request servers (ABI 1.6). OXEN_IOCTL_IOREQ_OPEN gives a file of its
 * own: it owns one zeroed page registered with DOMCTL_IOREQ_SETUP, which the
 * device model mmaps; closing it (the device model exiting or dying) tears
 * the server down before the page is freed, so the hypervisor never writes
 * into a page the kernel gave to someone else. Waiting is poll(2) on the
 * file: dom0's event line (OXEN_EVENT_IOREQ) wakes it, and it is readable
 * while the page holds something to serve.
 */
static_assert(sizeof(struct oxen_domain_ref) == 8);
static_assert(sizeof(struct oxen_ioreq_setup) == 16);
static_assert(sizeof(struct oxen_ioreq_range) == 32);
static_assert(sizeof(struct oxen_ioreq_done) == 8);
static_assert(sizeof(struct oxen_ioreq_slot) == 32);
static_assert(sizeof(struct oxen_posted_write) == 24);
static_assert(offsetof(struct oxen_ioreq_page, posted_head) == OXEN_IOREQ_OFFSET_POSTED_HEAD);
static_assert(offsetof(struct oxen_ioreq_page, posted_tail) == OXEN_IOREQ_OFFSET_POSTED_TAIL);
static_assert(offsetof(struct oxen_ioreq_page, posted) == OXEN_IOREQ_OFFSET_POSTED);
static_assert(sizeof(struct oxen_ioreq_page) == OXEN_IOREQ_PAGE_SIZE);
static_assert(OXEN_IOREQ_PAGE_SIZE <= PAGE_SIZE);
#define OXEN_EVENT_IOREQ_BIT 1
static_assert(OXEN_EVENT_IOREQ == BIT(OXEN_EVENT_IOREQ_BIT));

struct oxen_ioreq {
	u32 domid;
	struct page *page;
	struct oxen_ioreq_page *shared;
};

/* One DOMCTL with `len` bytes of argument (copied: it must be contiguous). */
static long oxen_domctl(u64 cmd, const void *arg, size_t len)
{
	void *k = kmemdup(arg, len, GFP_KERNEL);
	unsigned long rax;

	if (!k)
		return -ENOMEM;
	rax = oxen_hypercall(OXEN_HC_DOMCTL, cmd, virt_to_phys(k), len, 0, 0);
	kfree(k);
	return oxen_result_to_errno(rax);
}

static long oxen_ioreq_teardown(u32 domid)
{
	struct oxen_ioreq_setup s = { .domid = domid, .page = 0 };

	return oxen_domctl(OXEN_DOMCTL_IOREQ_SETUP, &s, sizeof(s));
}

static int oxen_ioreq_release(struct inode *inode, struct file *file)
{
	struct oxen_ioreq *io = file->private_data;
	long err = oxen_ioreq_teardown(io->domid);

	atomic_dec(&oxen_event_waiters[OXEN_EVENT_IOREQ_BIT]);
	/*
	 * The device model usually outlives its domain. The hypervisor answers
	 * 0 for a domain it no longer lists (vm/ioreq.rs `setup`: a domain that
	 * is gone has no vCPU left to touch the page, and its server went with
	 * it); -ENOENT says the same thing (no such domain), so the page is
	 * freed then too. Any other failure: the hypervisor may still hold the
	 * page, better lost than reused.
	 */
	if (err && err != -ENOENT)
		pr_warn("d%u: I/O server teardown failed (%ld): its page is kept\n", io->domid, err);
	else
		__free_page(io->page);
	kfree(io);
	return 0;
}

static int oxen_ioreq_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct oxen_ioreq *io = file->private_data;

	if (vma->vm_pgoff || vma->vm_end - vma->vm_start != PAGE_SIZE || !(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	return remap_pfn_range(vma, vma->vm_start, page_to_pfn(io->page), PAGE_SIZE, vma->vm_page_prot);
}

/* Something to serve: a READY slot, or posted writes not consumed. */
static bool oxen_ioreq_pending(const struct oxen_ioreq *io)
{
	int i;

	if (READ_ONCE(io->shared->posted_head) != READ_ONCE(io->shared->posted_tail))
		return true;
	for (i = 0; i < OXEN_MAX_VCPUS; i++)
		if (READ_ONCE(io->shared->slots[i].state) == OXEN_IOREQ_STATE_READY)
			return true;
	return false;
}

static __poll_t oxen_ioreq_poll(struct file *file, poll_table *wait)
{
	struct oxen_ioreq *io = file->private_data;

	poll_wait(file, &oxen_event_wq, wait);
	return oxen_ioreq_pending(io) ? EPOLLIN | EPOLLRDNORM : 0;
}

static long oxen_ioreq_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct oxen_ioreq *io = file->private_data;
	struct oxen_ioreq_range r;
	struct oxen_ioreq_done d;

	switch (cmd) {
	case OXEN_IOCTL_IOREQ_RANGE:
		if (copy_from_user(&r, (void __user *)arg, sizeof(r)))
			return -EFAULT;
		r.domid = io->domid;
		return oxen_domctl(OXEN_DOMCTL_IOREQ_RANGE, &r, sizeof(r));
	case OXEN_IOCTL_IOREQ_DONE:
		if (copy_from_user(&d, (void __user *)arg, sizeof(d)))
			return -EFAULT;
		d.domid = io->domid;
		return oxen_domctl(OXEN_DOMCTL_IOREQ_DONE, &d, sizeof(d));
	default:
		return -ENOTTY;
	}
}

static const struct file_operations oxen_ioreq_fops = {
	.owner = THIS_MODULE,
	.release = oxen_ioreq_release,
	.mmap = oxen_ioreq_mmap,
	.poll = oxen_ioreq_poll,
	.unlocked_ioctl = oxen_ioreq_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

static long oxen_ioctl_ioreq_open(struct oxen_domain_ref __user *uref)
{
	struct oxen_ioreq_setup s = {};
	struct oxen_domain_ref ref;
	struct oxen_ioreq *io;
	long err;
	int fd;

	/* Waiting is on the event line: without it a device model would spin. */
	if (oxen_event_irq < 0)
		return -ENODEV;
	if (copy_from_user(&ref, uref, sizeof(ref)))
		return -EFAULT;
	io = kzalloc(sizeof(*io), GFP_KERNEL);
	if (!io)
		return -ENOMEM;
	io->domid = ref.domid;
	io->page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!io->page) {
		kfree(io);
		return -ENOMEM;
	}
	io->shared = page_address(io->page);
	s.domid = ref.domid;
	s.page = page_to_phys(io->page);
	err = oxen_domctl(OXEN_DOMCTL_IOREQ_SETUP, &s, sizeof(s));
	if (err) {
		__free_page(io->page);
		kfree(io);
		return err;
	}
	atomic_inc(&oxen_event_waiters[OXEN_EVENT_IOREQ_BIT]);
	/* Tells the hypervisor the event is wanted now. */
	oxen_events_take();
	fd = anon_inode_getfd("oxen-ioreq", &oxen_ioreq_fops, io, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		/* As its release would. */
		atomic_dec(&oxen_event_waiters[OXEN_EVENT_IOREQ_BIT]);
		if (oxen_ioreq_teardown(io->domid))
			pr_warn("d%u: I/O server teardown failed: its page is kept\n", io->domid);
		else
			__free_page(io->page);
		kfree(io);
	}
	return fd;
}

/*
 * Foreign mappings (ABI 1.6): OXEN_IOCTL_FOREIGN_OPEN gives a file for one
 * domU's memory; each mmap on it asks the hypervisor for FOREIGN_MAP of the
 * pages the offset (a guest-physical address) and length name, and maps the
 * dom0-physical range it answers into the process; the VMA's close unmaps it
 * (FOREIGN_UNMAP). A VMA is the only holder of its mapping: it cannot be
 * split, moved, grown or copied into a child, so it is closed exactly once.
 *
 * Cache attributes: the pages are plain RAM the hypervisor maps write-back
 * (its NPT/EPT entry's memory type). The range lies in no e820 RAM of dom0's,
 * so with PAT on Linux would track it as I/O memory and, lacking MTRRs (the
 * hypervisor hides them), give a write-back request UC- (pat_x_mtrr_type);
 * dom0's Linux 6.1 turns PAT off when it finds no MTRRs, so the default
 * vm_page_prot (no PCD/PWT, PAT index 0 = WB at reset) is write-back. The
 * driver asks for that and never pgprot_noncached: the domU maps the same
 * frames write-back, and x86 does not support one page with two memory types
 * (SDM Vol. 3A §13.12.4). oxen-foreign-test reads the type Linux chose.
 */
struct oxen_foreign {
	u32 domid;
};

struct oxen_foreign_vma {
	u64 addr;
	u64 count;
};

static long oxen_foreign_domctl(u64 cmd, void *arg, size_t len)
{
	return (long)oxen_hypercall(OXEN_HC_DOMCTL, cmd, virt_to_phys(arg), len, 0, 0);
}

static void oxen_foreign_unmap(u64 addr, u64 count)
{
	struct oxen_foreign_unmap *u;
	long ret;

	/* The argument must be in dom0's RAM: kmalloc, never the stack (vmapped). */
	u = kmalloc(sizeof(*u), GFP_KERNEL | __GFP_NOFAIL);
	u->addr = addr;
	u->count = count;
	ret = oxen_foreign_domctl(OXEN_DOMCTL_FOREIGN_UNMAP, u, sizeof(*u));
	kfree(u);
	if (ret)
		pr_warn_ratelimited("foreign unmap of %#llx+%llu pages failed (%ld)\n", addr, count, ret);
}

static void oxen_foreign_vma_close(struct vm_area_struct *vma)
{
	struct oxen_foreign_vma *m = vma->vm_private_data;

	if (!m)
		return;
	vma->vm_private_data = NULL;
	oxen_foreign_unmap(m->addr, m->count);
	kfree(m);
}

static int oxen_foreign_may_split(struct vm_area_struct *vma, unsigned long addr)
{
	return -EINVAL;
}

static int oxen_foreign_mremap(struct vm_area_struct *vma)
{
	return -EINVAL;
}

static const struct vm_operations_struct oxen_foreign_vm_ops = {
	.close = oxen_foreign_vma_close,
	.may_split = oxen_foreign_may_split,
	.mremap = oxen_foreign_mremap,
};

static int oxen_foreign_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct oxen_foreign *f = file->private_data;
	unsigned long pages = vma_pages(vma);
	struct oxen_foreign_map *arg;
	struct oxen_foreign_vma *m;
	long ret;
	int err;

	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	m = kzalloc(sizeof(*m), GFP_KERNEL);
	arg = kzalloc(sizeof(*arg), GFP_KERNEL);
	if (!m || !arg) {
		err = -ENOMEM;
		goto fail;
	}
	arg->domid = f->domid;
	arg->first_gfn = vma->vm_pgoff;
	arg->count = pages;
	ret = oxen_foreign_domctl(OXEN_DOMCTL_FOREIGN_MAP, arg, sizeof(*arg));
	if (IS_ERR_VALUE(ret)) {
		err = oxen_result_to_errno(ret);
		goto fail;
	}
	m->addr = arg->addr;
	m->count = pages;
	vma->vm_flags |= VM_DONTCOPY | VM_DONTEXPAND | VM_DONTDUMP | VM_IO | VM_PFNMAP;
	vma->vm_ops = &oxen_foreign_vm_ops;
	vma->vm_private_data = m;
	err = remap_pfn_range(vma, vma->vm_start, m->addr >> PAGE_SHIFT, pages << PAGE_SHIFT, vma->vm_page_prot);
	if (err) {
		/* mmap_region does not call close for a failed mmap: undo here. */
		vma->vm_private_data = NULL;
		oxen_foreign_unmap(m->addr, m->count);
		goto fail;
	}
	kfree(arg);
	return 0;
fail:
	kfree(arg);
	kfree(m);
	return err;
}

/* Every VMA holds the file: by now each has been closed and unmapped. */
static int oxen_foreign_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static const struct file_operations oxen_foreign_fops = {
	.owner = THIS_MODULE,
	.mmap = oxen_foreign_mmap,
	.release = oxen_foreign_release,
	.llseek = no_llseek,
};

static long oxen_ioctl_foreign_open(struct oxen_foreign_open __user *uo)
{
	struct oxen_foreign_open o;
	struct oxen_foreign *f;
	int fd;

	if (copy_from_user(&o, uo, sizeof(o)))
		return -EFAULT;
	if (o._pad)
		return -EINVAL;
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	f->domid = o.domid;
	fd = anon_inode_getfd("oxen-foreign", &oxen_foreign_fops, f, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		kfree(f);
	return fd;
}

static long oxen_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case OXEN_IOCTL_HYPERCALL:
		return oxen_ioctl_hypercall(file->private_data, (struct oxen_hypercall __user *)arg);
	case OXEN_IOCTL_EVENT_WAIT:
		return oxen_ioctl_event_wait(file->private_data, (struct oxen_event_wait __user *)arg);
	case OXEN_IOCTL_IOREQ_OPEN:
		return oxen_ioctl_ioreq_open((struct oxen_domain_ref __user *)arg);
	case OXEN_IOCTL_FOREIGN_OPEN:
		return oxen_ioctl_foreign_open((struct oxen_foreign_open __user *)arg);
	default:
		return -ENOTTY;
	}
}

/* Only root with CAP_SYS_ADMIN may open it (the node is also mode 0600). */
static int oxen_open(struct inode *inode, struct file *file)
{
	struct oxen_file *f;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	mutex_init(&f->bounce_lock);
	file->private_data = f;
	return nonseekable_open(inode, file);
}

/* Its subscriptions end with it. */
static int oxen_release(struct inode *inode, struct file *file)
{
	struct oxen_file *f = file->private_data;
	int i;

	for (i = 0; i < OXEN_EVENT_COUNT; i++)
		if (f->mask & BIT_ULL(i))
			atomic_dec(&oxen_event_waiters[i]);
	kfree(f->bounce);
	kfree(f);
	return 0;
}

static const struct file_operations oxen_fops = {
	.owner = THIS_MODULE,
	.open = oxen_open,
	.release = oxen_release,
	.poll = oxen_poll,
	.unlocked_ioctl = oxen_ioctl,
	/* Every field is 64-bit, so 32-bit callers share the layout. */
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

static struct miscdevice oxen_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = OXEN_DEVICE_NAME,
	.fops = &oxen_fops,
	.mode = 0600,
};

/* Whether CPUID says we run under Oxen. */
static bool oxen_present(void)
{
	u32 max_leaf, sig[3];

	if (!(cpuid_ecx(1) & CPUID_1_ECX_HYPERVISOR)) {
		pr_err("no hypervisor (CPUID.1:ECX[31] is clear): not running under Oxen, not loading\n");
		return false;
	}
	cpuid(OXEN_CPUID_SIGNATURE_LEAF, &max_leaf, &sig[0], &sig[1], &sig[2]);
	if (memcmp(sig, OXEN_CPUID_SIGNATURE, sizeof(sig))) {
		pr_err("the hypervisor's CPUID signature is \"%*pE\", not \"%s\": not running under Oxen, not loading\n",
		       (int)sizeof(sig), sig, OXEN_CPUID_SIGNATURE);
		return false;
	}
	return true;
}

static int __init oxen_init(void)
{
	unsigned long version;
	unsigned int major, minor;
	int err;

	if (!oxen_present())
		return -ENODEV;

	switch (boot_cpu_data.x86_vendor) {
	case X86_VENDOR_AMD:
	case X86_VENDOR_HYGON:
		oxen_use_vmmcall = true;
		break;
	case X86_VENDOR_INTEL:
	case X86_VENDOR_CENTAUR:
	case X86_VENDOR_ZHAOXIN:
		oxen_use_vmmcall = false;
		break;
	default:
		pr_err("CPU vendor %u is neither Intel-like (VMCALL) nor AMD-like (VMMCALL): not loading\n",
		       boot_cpu_data.x86_vendor);
		return -ENODEV;
	}

	version = oxen_hypercall(OXEN_HC_VERSION, 0, 0, 0, 0, 0);
	if (IS_ERR_VALUE(version)) {
		pr_err("the VERSION hypercall failed (%ld): not loading\n", (long)version);
		return -ENODEV;
	}
	if (version >> 32) {
		pr_err("the VERSION hypercall returned %#lx, not a version: not loading\n", version);
		return -ENODEV;
	}
	major = version >> 16;
	minor = version & 0xffff;
	if (major != OXEN_ABI_MAJOR) {
		pr_err("hypervisor ABI %u.%u, this driver speaks %u.x: not loading\n",
		       major, minor, OXEN_ABI_MAJOR);
		return -EPROTONOSUPPORT;
	}

	oxen_events_init(minor);
	err = misc_register(&oxen_miscdev);
	if (err) {
		pr_err("cannot register /dev/%s: %d\n", OXEN_DEVICE_NAME, err);
		oxen_events_exit();
		return err;
	}
	pr_info("hypervisor ABI %u.%u, /dev/%s ready\n", major, minor, OXEN_DEVICE_NAME);
	return 0;
}

static void __exit oxen_exit(void)
{
	misc_deregister(&oxen_miscdev);
	oxen_events_exit();
}

module_init(oxen_init);
module_exit(oxen_exit);

MODULE_DESCRIPTION("/dev/oxen: hypercalls to the Oxen hypervisor for dom0's tools");
MODULE_AUTHOR("The Oxen developers");
MODULE_LICENSE("Dual MIT/GPL");
