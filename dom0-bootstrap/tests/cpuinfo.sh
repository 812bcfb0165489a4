#!/bin/sh
# CPUID/MSR agreement, run in dom0 by the `dom0-cpuinfo-*` system tests
# (tests/system.toml), on several CPU models: the cpuinfo domU exercises the
# MSRs of every feature it is shown and checks its APIC IDs are virtual, and
# dom0's own boot (the same question for dom0's policy) logged no unchecked MSR
# access or general protection fault.
. "$(dirname "$0")/lib.sh"
state_is() { [ "$(field "$1" 5)" = "$2" ]; }

free0=$(free_kib)
check "create cpuinfo" "oxl create failed" oxl create /etc/oxen/cpuinfo.cfg
check "cpuinfo powers off, kept (on_poweroff = preserve)" "state $(field cpuinfo 5)" \
    wait_for 120 state_is cpuinfo shutdown
oxl console --dump cpuinfo | grep -v "^cpuinfo: cpuid "
check "cpuinfo: every MSR of every shown feature works" "see its console above" \
    sh -c 'oxl console --dump cpuinfo | grep -q "cpuinfo: summary: [0-9]* features shown, [0-9]* msr probes, 0 unexpected,"'
check "cpuinfo: APIC IDs are virtual" "see its console above" \
    sh -c 'oxl console --dump cpuinfo | grep -q "cpuinfo: summary: .*apic ids virtual: yes"'
check "destroy cpuinfo" "oxl destroy failed" oxl destroy cpuinfo
free1=$(free_kib)
check "memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]

# dom0 itself: vCPU 0 keeps CPU 0's physical APIC ID, and its kernel met no
# MSR it was promised but refused.
echo "cpuinfo: dom0 $(grep -m1 '^flags' /proc/cpuinfo)"
dmesg | grep -E "unchecked MSR access|general protection|misordered xstate|XSAVE consistency" | sed 's/^/cpuinfo: dom0 log: /'
check "dom0 log: no unchecked MSR access" "see the dom0 log lines above" sh -c '! dmesg | grep -q "unchecked MSR access"'
check "dom0 log: no general protection fault" "see the dom0 log lines above" sh -c '! dmesg | grep -q "general protection"'
check "dom0 answers" "" [ "$(echo $((6 * 7)))" = 42 ]
echo "cpuinfo: done, $failed failed"
