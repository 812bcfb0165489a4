#!/bin/sh
# Hostile dom0 user space (issue 9, item 10), run in dom0 by the system tests
# `dom0-hostile-user-svm` and `dom0-probes-vmx` (through hostile-vmx.sh):
# /usr/lib/oxen/user-probe runs every VMX and SVM instruction, XSETBV, INVD,
# WBINVD, RDPMC, MONITOR, MWAIT, MOV CR8 and both hypercall instructions (with
# random registers) as an unprivileged process, while a background loop keeps
# timing `oxl list` and a minimal domU ticks. Each instruction must only get
# the process the signal a bare CPU gives it; dom0, the domU and the
# hypervisor carry on. Prints "check: NAME: ok|FAILED (why)" (lib.sh).
# Argument: hypercalls per instruction (default 300).
calls=${1:-300}
. "$(dirname "$0")/lib.sh"
uptime_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }
lat=/tmp/hostile-user.oxl-list
out=/tmp/hostile-user.probe
rm -f "$lat" "$out"
# How many `oxl list` the loop has seen answered.
answers() { n=$(grep -c '^ok ' "$lat" 2>/dev/null); echo "${n:-0}"; }
answered_past() { [ "$(answers)" -gt "$1" ]; }

free0=$(free_kib)
check "create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "minimal-1 ticks" "no ticks" wait_for 30 ticked_past minimal-1 0

# `oxl list` over and over, one line per run: "ok MS" or "failed MS".
(
    while :; do
        t0=$(uptime_cs)
        if oxl list > /dev/null 2>&1; then r=ok; else r=failed; fi
        echo "$r $((($(uptime_cs) - t0) * 10))" >> "$lat"
    done
) &
lister=$!
check "oxl list loop answers" "no answer in 30 s" wait_for 30 answered_past 0

before=$(answers)
t=$(last_tick minimal-1)
# Streamed (tee), so a host that dies mid-probe shows which instruction it was.
{ /usr/lib/oxen/user-probe "$calls"; echo "probe: exit status $?"; } 2>&1 | tee "$out"
during=$(answers)
echo "hostile-user: oxl list answered $((during - before)) times while the probe ran"
check "oxl list answered again after the probe" "no answer in 20 s" wait_for 20 answered_past "$during"
after=$(answers)
kill "$lister"
wait "$lister" 2> /dev/null
vmxoff_sigill() {
    grep -q '^probe: vmxoff: SIGILL (expected SIGILL) ok' "$out" && [ "$during" -gt "$before" ] && [ "$after" -gt "$during" ]
}

check "the probe ran unprivileged" "no uid 65534 line" grep -q '^probe: pid [0-9]*, uid 65534,' "$out"
check "the VMXOFF probe ends with SIGILL in that process while oxl list keeps answering" \
    "$(grep '^probe: vmxoff:' "$out"); oxl list answers during the probe: $((during - before)), after: $((after - during))" \
    vmxoff_sigill
check "every probe got the signal a bare CPU gives" "$(grep -c UNEXPECTED "$out") unexpected" \
    grep -q '^probe: summary: [0-9]* probes, 0 unexpected' "$out"
n=$(answers)
fails=$(grep -c '^failed ' "$lat")
worst=$(awk '{ if ($2 > w) w = $2 } END { print w + 0 }' "$lat")
echo "hostile-user: oxl list answered $n times, $fails failed, slowest $worst ms"
answered_throughout() { [ "$n" -gt 0 ] && [ "$fails" = 0 ] && [ "$worst" -lt 2000 ]; }
check "oxl list answered throughout (none failed, each within 2 s)" "$fails failed, slowest $worst ms" \
    answered_throughout
check "minimal-1 still ticks" "stuck at tick $t" wait_for 20 ticked_past minimal-1 "$t"
junk=$(oxl console --dump minimal-1 | grep -v -c -E "^minimal: (domain [0-9]+ up, |TSC runs at |tick [0-9]+$)")
check "minimal-1's console is intact" "$junk unexpected lines" [ "$junk" = 0 ]
check "dom0 answers" "" [ "$(echo $((6 * 7)))" = 42 ]
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
free1=$(free_kib)
check "memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
echo "hostile-user: done, $failed failed"
