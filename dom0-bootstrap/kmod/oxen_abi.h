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
#define OXEN_ABI_VERSION 0x00010006
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
#define OXEN_EVENT_ALL 0x1

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

#endif /* OXEN_ABI_H */
