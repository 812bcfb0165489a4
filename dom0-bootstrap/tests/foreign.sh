#!/bin/sh
# Foreign mappings (ABI 1.6, docs/hypercalls.md "Foreign mappings"), run in
# dom0 by the system test `dom0-foreign-svm`: beside a running minimal domU,
# /usr/lib/oxen/foreign-test (dom0-bootstrap/kmod/foreign-test.c) maps its RAM
# through /dev/oxen and checks the bytes against its kernel's ELF file and the
# config, a write through one mapping read through another, the refusals
# (dom0 itself, a missing domain, past its RAM, too many pages, none, a
# private mapping, the raw domctl, a partial munmap, a non-root process), then
# destroys the domain while it is mapped: the old mapping must read all ones
# or signal, never the domain's bytes, and unmap cleanly. Here: dom0 runs on,
# `oxl list` answers, the hypervisor says it emptied the mappings before
# freeing, and free memory is back to the byte.
command -v check > /dev/null || . "$(dirname "$0")/lib.sh"
d=minimal-1
free0=$(free_kib)
echo "foreign: $free0 KiB free before"
# Which cache type dom0's Linux gives the window (PAT off: write-back).
dmesg | grep -i -m 3 'x86/PAT\|PAT support\|mtrr' | sed 's/^/foreign: dom0 kernel: /'
check "foreign: create" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "foreign: it ticks" "no tick line" wait_for 60 ticked_past $d 1
id=$(field $d 2)
mib=$(field $d 3)
echo "foreign: $d is d$id with $mib MiB"
/usr/lib/oxen/foreign-test "$id" $d "$mib" /usr/lib/oxen/guests/minimal.elf interval_ms=500
rc=$?
check "foreign: the test program passed" "$rc failure(s), or it died (status $rc)" [ "$rc" = 0 ]
check "foreign: oxl list answers" "oxl list failed" oxl list
check "foreign: the domain is gone" "$d still listed" gone $d
emptied() { dmesg_oxen=$(oxl dmesg 2>/dev/null); echo "$dmesg_oxen" | grep -q "foreign: d$id: [0-9]* mapping(s) into dom0 emptied and flushed before its memory is freed"; }
check "foreign: emptied before its memory was freed" "no such line in the hypervisor's log" emptied
free_back() { [ "$(free_kib)" = "$free0" ]; }
check "foreign: memory back to the byte" "$free0 KiB before, $(free_kib) KiB after" wait_for 10 free_back
echo "foreign: done, $failed failed"
