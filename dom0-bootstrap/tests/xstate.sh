#!/bin/sh
# Cross-domain register test, run in dom0 by the system tests `dom0-xstate-svm`
# and `dom0-probes-vmx` (tests/system.toml): two `regs` domUs and dom0's
# `xstate-test` share pCPU 0 (the domUs are pinned there, beside dom0's vCPU 0),
# each filling its vector registers with its own pattern and re-reading them for
# 10 s across every preemption. Any register another domain changed is a
# mismatch; all must be zero. The domUs also report that every XCR0 value the
# CPU refuses gave #GP and left XCR0 alone. Prints "check: NAME: ok|FAILED (why)".
. "$(dirname "$0")/lib.sh"
done_line() { oxl console --dump "$1" | grep "regs: done:"; }
finished() { [ -n "$(done_line "$1")" ]; }

free0=$(free_kib)
# QEMU 7.2's TCG has no XSETBV intercept: its own check (against the CPU model's
# components) answers a guest's XSETBV, never Oxen's. There the regs guests try
# only values of the components their CPUID offers; Oxen's own check is what
# dom0-probes-vmx (Bochs) tests.
for d in regs-1 regs-2; do
    cfg=/etc/oxen/$d.cfg
    if grep -q "QEMU TCG" /proc/cpuinfo; then
        sed 's/^extra = "\(.*\)"/extra = "\1 native_xsetbv=1"/' "$cfg" > "/tmp/$d.cfg"
        cfg=/tmp/$d.cfg
        echo "xstate: QEMU TCG answers XSETBV itself (no intercept): $d tries only offered components"
    fi
    check "create $d" "oxl create failed" oxl create "$cfg"
done
/usr/lib/oxen/xstate-test 10 > /tmp/xstate-test.out 2>&1 &
pid=$!
wait "$pid"
rc=$?
cat /tmp/xstate-test.out
check "dom0's xstate-test: 0 mismatches" "exit status $rc" \
    sh -c "[ $rc = 0 ] && grep -q 'xstate-test: done: .*, [1-9][0-9]* checks, 0 mismatches' /tmp/xstate-test.out"
for d in regs-1 regs-2; do
    check "$d finishes" "no done line" wait_for 120 finished "$d"
    oxl console --dump "$d"
    check "$d: 0 mismatches" "$(done_line "$d")" \
        sh -c "oxl console --dump $d | grep -q 'regs: done: .*, [1-9][0-9]* checks, 0 mismatches'"
    if oxl console --dump "$d" | grep -q "regs: xsetbv checks skipped (no XSAVE)"; then
        echo "check: $d: XSETBV not tested: the CPU has no XSAVE"
    else
        check "$d: every invalid XCR0 gave #GP and left XCR0 alone" "see its console above" \
            sh -c "oxl console --dump $d | grep -q 'regs: xsetbv checks passed'"
    fi
done
oxl vcpu-list
oxl destroy regs-1; oxl destroy regs-2
free_back() { [ "$(free_kib)" = "$free0" ]; }
check "memory back" "$free0 KiB before, $(free_kib) KiB after" wait_for 10 free_back
echo "xstate: done, $failed failed"
