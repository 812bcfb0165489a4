/* SPDX-License-Identifier: (GPL-2.0 OR MIT) */
/*
 * Oxen's hypercall ABI as dom0's /dev/oxen driver and C callers see it.
 *
 * A mirror of hypervisor/abi/src/lib.rs (crate oxen-abi), which is the
 * definition: `cargo test -p xtask` parses this file and checks every number
 * in it against that crate, so the two cannot drift apart. Keep each value a
 * plain literal (or the one _IOWR below) so that test can read it.
 */
#ifndef OXEN_ABI_H
#define OXEN_ABI_H

#include <linux/types.h>
#include <linux/ioctl.h>

/* ABI_VERSION: major in bits 31:16, minor in 15:0. Callers check the major. */
#define OXEN_ABI_VERSION 0x00010007
#define OXEN_ABI_MAJOR 1

/* CPUID: signature in EBX, ECX, EDX of the signature leaf. */
#define OXEN_CPUID_SIGNATURE_LEAF 0x40000000
#define OXEN_CPUID_VERSION_LEAF 0x40000001
#define OXEN_CPUID_SIGNATURE "OxenOxenOxen"

/* Hypercall numbers (RAX) the driver forwards. */
#define OXEN_HC_VERSION 0
#define OXEN_HC_NULL 1
#define OXEN_HC_DOMCTL 16
/* The driver's own: takes dom0's events, says which it wants (1.5). */
#define OXEN_HC_EVENTS 7

/* dom0's event line: this GSI of its IOAPIC, level, active high (1.5). */
#define OXEN_EVENT_GSI 24
/* Event bits. */
#define OXEN_EVENT_CONSOLE 0x1
/* A domU's access waits in an I/O request slot, or a posted write came (1.6). */
#define OXEN_EVENT_IOREQ 0x2
#define OXEN_EVENT_ALL 0x3

/* Largest DOMCTL argument structure and data buffer, in bytes. */
#define OXEN_DOMCTL_ARG_MAX 4096
#define OXEN_DOMCTL_BUF_MAX 65536

/* The misc device: /dev/oxen. */
#define OXEN_DEVICE_NAME "oxen"

/*
 * HypercallIoctl: one hypercall with its argument structure and data buffer
 * copied in from the caller and back out. Pointer/length 0/0 means none.
 */
struct oxen_hypercall {
	__u64 nr;
	__u64 cmd;
	__u64 arg;
	__u64 arg_len;
	__u64 buf;
	__u64 buf_len;
	__s64 result;
};

#define OXEN_IOCTL_HYPERCALL _IOWR('O', 1, struct oxen_hypercall)

/*
 * EventWaitIoctl (1.5): sleeps until the driver's count of the events in
 * `mask` differs from `count`, or `timeout_ms` passed; `count` comes back as
 * the count now. ENODEV: no event line.
 */
struct oxen_event_wait {
	__u64 mask;
	__u64 count;
	__u64 timeout_ms;
};

#define OXEN_IOCTL_EVENT_WAIT _IOWR('O', 2, struct oxen_event_wait)

/*
 * I/O requests (1.6): a domU's accesses to the ranges its device model
 * registered wait in a page of dom0's RAM shared with the hypervisor
 * (docs/hypercalls.md, "I/O requests").
 */
#define OXEN_DOMCTL_IOREQ_SETUP 21
#define OXEN_DOMCTL_IOREQ_RANGE 22
#define OXEN_DOMCTL_IOREQ_DONE 23
#define OXEN_MAX_VCPUS 8
#define OXEN_IOREQ_STATE_FREE 0
#define OXEN_IOREQ_STATE_READY 1
#define OXEN_IOREQ_STATE_DONE 2
#define OXEN_IOREQ_KIND_MMIO 0
#define OXEN_IOREQ_KIND_PIO 1
#define OXEN_IOREQ_DIR_READ 0
#define OXEN_IOREQ_DIR_WRITE 1
#define OXEN_IOREQ_FLAG_POSTED_WRITES 1
#define OXEN_IOREQ_MAX_RANGES 16
#define OXEN_IOREQ_POSTED_ENTRIES 128
#define OXEN_IOREQ_OFFSET_POSTED_HEAD 256
#define OXEN_IOREQ_OFFSET_POSTED_TAIL 320
#define OXEN_IOREQ_OFFSET_POSTED 384
#define OXEN_IOREQ_PAGE_SIZE 4096

/* DomainRef: a domain, for OXEN_IOCTL_IOREQ_OPEN. */
struct oxen_domain_ref {
	__u32 domid;
	__u32 _pad;
};

/* IoreqSetup: DOMCTL_IOREQ_SETUP's argument (page 0: tear down). */
struct oxen_ioreq_setup {
	__u32 domid;
	__u32 _pad;
	__u64 page;
};

/* IoreqRange: DOMCTL_IOREQ_RANGE's argument and OXEN_IOCTL_IOREQ_RANGE's. */
struct oxen_ioreq_range {
	__u32 domid;
	__u32 kind;
	__u32 flags;
	__u32 _pad;
	__u64 start;
	__u64 len;
};

/* IoreqDone: DOMCTL_IOREQ_DONE's argument and OXEN_IOCTL_IOREQ_DONE's. */
struct oxen_ioreq_done {
	__u32 domid;
	__u32 vcpu;
};

/* IoreqSlot: vCPU i's request, at slots[i] of the page. */
struct oxen_ioreq_slot {
	__u32 state;
	__u32 seq;
	__u8 kind;
	__u8 dir;
	__u8 size;
	__u8 _pad0;
	__u32 _pad1;
	__u64 addr;
	__u64 data;
};

/* PostedWrite: an entry of the posted ring. */
struct oxen_posted_write {
	__u8 kind;
	__u8 size;
	__u8 vcpu;
	__u8 _pad0;
	__u32 _pad1;
	__u64 addr;
	__u64 data;
};

/* IoreqPage: what the ioreq fd maps (offsets above). */
struct oxen_ioreq_page {
	struct oxen_ioreq_slot slots[OXEN_MAX_VCPUS];
	__u32 posted_head;
	__u8 _pad_head[60];
	__u32 posted_tail;
	__u8 _pad_tail[60];
	struct oxen_posted_write posted[OXEN_IOREQ_POSTED_ENTRIES];
	__u8 _reserved[640];
};

/*
 * On /dev/oxen: a new fd serving the domain's I/O requests. It registers a
 * zeroed page, mmaps it (one page, shared), is readable (poll) while a slot
 * is READY or the ring is not empty, and tears the server down when closed.
 */
#define OXEN_IOCTL_IOREQ_OPEN _IOWR('O', 0x10, struct oxen_domain_ref)
/* On an ioreq fd (domid ignored: the fd's). */
#define OXEN_IOCTL_IOREQ_RANGE _IOWR('O', 0x11, struct oxen_ioreq_range)
#define OXEN_IOCTL_IOREQ_DONE _IOWR('O', 0x12, struct oxen_ioreq_done)

#endif /* OXEN_ABI_H */
