#!/bin/sh
# Credit-scheduler checks, run in dom0 by the system test `dom0-sched-svm`
# (tests/system.toml) on a two-pCPU machine. Prints "check: NAME: ok|FAILED
# (why)" like lifecycle.sh. CPU time comes from the hypervisor (oxl list
# --json, cpu_time_ns); wall time from dom0's /proc/uptime.
window=${1:-12}
. "$(dirname "$0")/lib.sh"
cpu_ns() { oxl list --json "$1" | sed -n 's/.*"cpu_time_ns": *\([0-9]*\).*/\1/p'; }
uptime_cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }

# Weights: two spinners pinned to pCPU 1, weights 256 and 512.
oxl create /etc/oxen/spin-w256.cfg && oxl create /etc/oxen/spin-w512.cfg
oxl sched-credit
sleep 2
a0=$(cpu_ns spin-w256); b0=$(cpu_ns spin-w512); t0=$(uptime_cs)
sleep "$window"
a1=$(cpu_ns spin-w256); b1=$(cpu_ns spin-w512); t1=$(uptime_cs)
da=$(((a1 - a0) / 1000000)); db=$(((b1 - b0) / 1000000)); dt=$(((t1 - t0) * 10))
echo "sched: weights 256:512 over $dt ms: $da ms : $db ms of CPU"
if [ "$da" -gt 0 ]; then r=$((db * 1000 / da)); else r=0; fi
echo "sched: ratio x1000 = $r (1:2 is 2000; 5% is 1900..2100)"
if [ "$r" -ge 1900 ] && [ "$r" -le 2100 ]; then ok "weights 256:512 share pCPU 1 as 1:2 within 5%"; else bad "weights 256:512 share pCPU 1 as 1:2 within 5%" "ratio $r/1000"; fi
busy=$(((da + db) * 100 / dt))
echo "sched: pCPU 1 busy $busy% of the window"
oxl vcpu-list
oxl destroy spin-w256; oxl destroy spin-w512

# Cap: a spinner capped at 25% alone on pCPU 1.
oxl create /etc/oxen/spin-cap25.cfg
sleep 2
c0=$(cpu_ns spin-cap25); t0=$(uptime_cs)
sleep "$window"
c1=$(cpu_ns spin-cap25); t1=$(uptime_cs)
dc=$(((c1 - c0) / 1000000)); dt=$(((t1 - t0) * 10))
pct10=$((dc * 1000 / dt))
echo "sched: capped at 25%: $dc ms of CPU in $dt ms = $pct10/10 %"
if [ "$pct10" -ge 220 ] && [ "$pct10" -le 280 ]; then ok "cap 25% gives 25 +- 3%"; else bad "cap 25% gives 25 +- 3%" "$pct10/10 %"; fi
oxl destroy spin-cap25

# A vCPU spinning with interrupts off on dom0's own pCPU never starves dom0.
oxl create /etc/oxen/spin-cli.cfg
sleep 2
worst=0
i=0
while [ "$i" -lt 10 ]; do
    t0=$(uptime_cs)
    oxl list > /dev/null
    t1=$(uptime_cs)
    d=$(((t1 - t0) * 10))
    [ "$d" -gt "$worst" ] && worst=$d
    i=$((i + 1))
done
s0=$(cpu_ns spin-cli)
echo "sched: with spin-cli on pCPU 0, the slowest of 10 'oxl list' took $worst ms; spin-cli has run $((s0 / 1000000)) ms"
if [ "$worst" -lt 1000 ]; then ok "dom0 answers within 1 s beside a spinner with interrupts off"; else bad "dom0 answers within 1 s beside a spinner with interrupts off" "$worst ms"; fi
if [ "$s0" -gt 0 ]; then ok "the spinner runs too"; else bad "the spinner runs too" "no CPU time"; fi
oxl destroy spin-cli
echo "sched: done, $failed failed"
