#!/bin/sh
# vCPU state as a value (docs/hypercalls.md, VCPU_STATE_GET/SET), run in dom0 by
# the system test `dom0-vcpu-state-svm`, and sourced by xstate.sh for
# `dom0-probes-vmx` (Bochs). The `vstate` guest spins in a loop that holds a
# marker in R15 and checks R12/R13 on every pass, reporting both each second.
# 1. paused inside that loop, its state is read and written back unchanged:
#    read back equal, and after unpause it goes on with the same marker and
#    its registers ok;
# 2. R15 set to another marker through --reg: the guest reports that marker;
# 3. a truncated and a corrupted encoding are refused with a clear error (the
#    reason in the hypervisor's log) and the guest goes on unaffected;
# 4. the domain not paused: refused. Prints "check: vstate: ...: ok|FAILED".
# `dom0-probes-vmx` runs it under Bochs (VT-x).
command -v check > /dev/null || . "$(dirname "$0")/lib.sh"
d=vstate
vfree0=$(free_kib)
round() { oxl console --dump $d | sed -n 's/.*vstate: round \([0-9]*\) marker.*/\1/p' | tail -n 1; }
rounds_past() { r=$(round); [ -n "$r" ] && [ "$r" -gt "$1" ]; }
last_line() { oxl console --dump $d | grep "vstate: round" | tail -n 1; }
# A field of the state as `oxl vcpu-state` prints it.
field_of() { sed -n "s/^$1 //p" "$2"; }
check "vstate: create" "oxl create failed" oxl create /etc/oxen/vstate.cfg
check "vstate: it reports" "no round line" wait_for 60 rounds_past 1
range=$(oxl console --dump $d | sed -n 's/.*vstate: domain [0-9]* up, loop \(0x[0-9a-f]*\)-\(0x[0-9a-f]*\).*/\1 \2/p')
lo=${range% *}; hi=${range#* }
echo "vstate: its loop is at $lo-$hi"
# Pauses it with its RIP inside the loop (where R15 is the marker).
pause_in_loop() {
    oxl pause $d || return 1
    if oxl vcpu-state $d 0 > /tmp/vs.txt; then
        rip=$(field_of arch.rip /tmp/vs.txt)
        [ -n "$rip" ] && [ $((rip)) -ge $((lo)) ] && [ $((rip)) -lt $((hi)) ] && return 0
        echo "vstate: paused at rip $rip, outside its loop: again"
    fi
    oxl unpause $d
    return 1
}
check "vstate: paused inside its loop" "rip never in $lo-$hi" wait_for 20 pause_in_loop
echo "vstate: paused at rip $(field_of arch.rip /tmp/vs.txt), r15 $(field_of arch.r15 /tmp/vs.txt), cr0 $(field_of arch.cr0 /tmp/vs.txt), efer $(field_of arch.efer /tmp/vs.txt), xcr0 $(field_of xstate.xcr0 /tmp/vs.txt), $(grep -c . /tmp/vs.txt) fields"
check "vstate: state saved" "oxl vcpu-state -o failed" oxl vcpu-state $d 0 -o /tmp/vs.bin
echo "vstate: its encoding is $(wc -c < /tmp/vs.bin) bytes"
check "vstate: state written back unchanged" "oxl vcpu-state --set failed" oxl vcpu-state $d 0 --set /tmp/vs.bin
oxl vcpu-state $d 0 > /tmp/vs-after.txt
# The TSC moves on, and so would a running APIC timer's count.
same_state() { grep -v '^tsc\.tsc \|^lapic\.timer\.current ' "$1" > /tmp/a.txt; grep -v '^tsc\.tsc \|^lapic\.timer\.current ' "$2" > /tmp/b.txt; cmp -s /tmp/a.txt /tmp/b.txt; }
check "vstate: read back equal after the write" "$(diff /tmp/vs.txt /tmp/vs-after.txt | head -n 6 | tr '\n' ' ')" same_state /tmp/vs.txt /tmp/vs-after.txt
r0=$(round)
oxl unpause $d
check "vstate: it goes on after the write" "round stayed at $r0" wait_for 30 rounds_past $((r0 + 2))
last_line
check "vstate: same marker, registers ok" "$(last_line)" sh -c "oxl console --dump $d | tail -n 3 | grep -q 'marker 0x11110000 spins [1-9][0-9]*, registers ok'"
check "vstate: not paused: refused" "vcpu-state worked on a running domain" sh -c "! oxl vcpu-state $d 0 > /dev/null 2>&1"
check "vstate: paused inside its loop again" "rip never in $lo-$hi" wait_for 20 pause_in_loop
check "vstate: R15 set to 0x5eed5eed" "oxl vcpu-state --reg failed" oxl vcpu-state $d 0 --reg arch.r15=0x5eed5eed
r0=$(round)
oxl unpause $d
check "vstate: it goes on after the change" "round stayed at $r0" wait_for 30 rounds_past $((r0 + 1))
last_line
check "vstate: it reports the new marker, registers ok" "$(last_line)" sh -c "oxl console --dump $d | tail -n 2 | grep -q 'marker 0x5eed5eed spins [1-9][0-9]*, registers ok'"
oxl pause $d
head -c 100 /tmp/vs.bin > /tmp/vs-short.bin
cp /tmp/vs.bin /tmp/vs-bad.bin
printf '\377' | dd of=/tmp/vs-bad.bin bs=1 seek=200 conv=notrunc 2> /dev/null
for f in short bad; do
    oxl vcpu-state $d 0 --set /tmp/vs-$f.bin > /tmp/vs-err.txt 2>&1
    rc=$?
    cat /tmp/vs-err.txt
    check "vstate: $f encoding refused" "exit status $rc: $(cat /tmp/vs-err.txt)" sh -c "[ $rc != 0 ] && grep -q 'refused the state' /tmp/vs-err.txt"
done
oxl dmesg | grep "state refused" | tail -n 2
check "vstate: the log says why" "no reason in oxl dmesg" sh -c "oxl dmesg | grep -q 'vCPU 0: state refused: truncated' && oxl dmesg | grep -q 'vCPU 0: state refused: checksum mismatch'"
r0=$(round)
oxl unpause $d
check "vstate: unaffected by the refused states" "round stayed at $r0" wait_for 30 rounds_past $((r0 + 1))
check "vstate: still its marker, registers ok" "$(last_line)" sh -c "oxl console --dump $d | tail -n 2 | grep -q 'marker 0x5eed5eed spins [1-9][0-9]*, registers ok'"
check "vstate: every round had its registers ok" "a round reported a failure: see its console" sh -c "! oxl console --dump $d | grep -q 'registers FAILED\|, FAILED'"
oxl destroy $d
vfree_back() { [ "$(free_kib)" = "$vfree0" ]; }
check "vstate: memory back" "$vfree0 KiB before, $(free_kib) KiB after" wait_for 10 vfree_back
echo "vcpu-state: done, $failed failed"
