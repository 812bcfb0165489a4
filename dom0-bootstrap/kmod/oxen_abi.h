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
#define OXEN_ABI_VERSION 0x0001000a
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
/*
 * The DOMCTLs whose data buffer is input only (bit N: DOMCTL N): nothing is
 * copied back to the caller (DOMCTL_BUFFER_IN_ONLY).
 */
#define OXEN_DOMCTL_BUFFER_IN_ONLY_MASK 0x8050004

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
#define OXEN_IOREQ_FLAG_INTERRUPT_STATUS 2
#define OXEN_IOREQ_MAX_RANGES 48
#define OXEN_IOREQ_POSTED_ENTRIES 128
#define OXEN_IOREQ_OFFSET_POSTED_HEAD 256
#define OXEN_IOREQ_OFFSET_POSTED_TAIL 320
#define OXEN_IOREQ_OFFSET_POSTED 384
#define OXEN_IOREQ_OFFSET_INTERRUPT_STATUS 3456
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
	__u32 interrupt_status[8];	/* MAX_DEVICES (1.10) */
	__u8 _reserved[608];
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

/*
 * Foreign mappings (1.6): a domU's RAM pages shown to dom0. Domctls the
 * driver makes itself (OXEN_IOCTL_HYPERCALL refuses them): a mapping is only
 * made and ended through a foreign file's mmap and munmap.
 */
#define OXEN_ABI_DEVICE_MODEL 0x00010006
#define OXEN_DOMCTL_FOREIGN_MAP 19
#define OXEN_DOMCTL_FOREIGN_UNMAP 20
/* Most pages one mapping holds: the hypervisor's whole window (1 GiB). */
#define OXEN_FOREIGN_MAP_MAX_PAGES 262144

/* ForeignMap: `count` pages from guest frame `first_gfn`; `addr` comes back. */
struct oxen_foreign_map {
	__u32 domid;
	__u32 _pad;
	__u64 first_gfn;
	__u64 count;
	__u64 addr;
};

/* ForeignUnmap: exactly what FOREIGN_MAP returned. */
struct oxen_foreign_unmap {
	__u64 addr;
	__u64 count;
};

/*
 * ForeignOpenIoctl (1.6): a new file descriptor (returned by the ioctl) for
 * domain `domid`'s memory. mmap(len, offset = guest-physical address) on it
 * maps those pages, shared, read-write; munmap (or the process's end) unmaps.
 */
struct oxen_foreign_open {
	__u32 domid;
	__u32 _pad;
};

#define OXEN_IOCTL_FOREIGN_OPEN _IOWR('O', 0x13, struct oxen_foreign_open)

/*
 * Dirty-page logging (1.8): DOMCTL_LOG_DIRTY through OXEN_IOCTL_HYPERCALL
 * (the driver forwards it as any domctl). ENABLE write-protects the domU's
 * RAM and starts a clean log; CLEAN copies the bits of pages [first,
 * first + pages) into the buffer (bit i of byte j: page first + 8 j + i)
 * and clears and write-protects them again; PEEK copies without clearing;
 * DISABLE ends it. `first` a multiple of 64; the buffer holds
 * ceil(pages / 64) u64 words. Returns the number of dirty pages copied.
 */
#define OXEN_ABI_LOG_DIRTY 0x00010008
#define OXEN_DOMCTL_LOG_DIRTY 30
#define OXEN_LOG_DIRTY_ENABLE 0
#define OXEN_LOG_DIRTY_DISABLE 1
#define OXEN_LOG_DIRTY_CLEAN 2
#define OXEN_LOG_DIRTY_PEEK 3

/* A domU's console, for a test that talks to its guest. */
#define OXEN_DOMCTL_CONSOLE_READ 10
#define OXEN_DOMCTL_CONSOLE_INPUT 16

/* RingRead: DOMCTL_CONSOLE_READ's argument; `next` and `lost` come back. */
struct oxen_ring_read {
	__u32 domid;
	__u32 _pad;
	__u64 offset;
	__u64 next;
	__u64 lost;
};

/* LogDirty: DOMCTL_LOG_DIRTY's argument. */
struct oxen_log_dirty {
	__u32 domid;
	__u32 op;
	__u64 first;
	__u64 pages;
};

#endif /* OXEN_ABI_H */
