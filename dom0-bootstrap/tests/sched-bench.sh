#!/bin/sh
# Credit-scheduler measurements for `cargo xtask bench` (xtask/src/bench.rs), which
# boots dom0 (nr_cpus=1: one vCPU, on pCPU 0) with
# `dom0_run=/usr/lib/oxen/tests/sched-bench.sh sched_window=SECONDS` on two pCPUs
# and parses the lines starting with "sched-bench: ". The domains are the ones
# of the system test's sched.sh (dom0-bootstrap/domains/spin-*.cfg).
#
# 1. Weights: spin-w256 and spin-w512 pinned to pCPU 1 (the same as sched.sh),
#    their CPU time (the hypervisor's, `oxl list --json`) over the window.
# 2. dom0 beside spin-cli, a spinner with interrupts off pinned to dom0's pCPU 0:
#    10 `oxl list`, each timed, as sched.sh does, and the same 10 before
#    spin-cli exists for comparison.
#
# Around each part's steady state the script prints "sched-bench: counters NAME"
# and sleeps: xtask then types the hypervisor console's `s` key (Ctrl-A three
# times, `s`, Ctrl-A three times back to dom0), and the hypervisor prints its
# scheduler counters (`(oxen) sched: ...`, hypervisor/src/sched/run.rs) to the
# serial console while dom0 sleeps. By hand: run it in dom0's shell and press
# the keys yourself when it says so.
window=12
for word in $(cat /proc/cmdline); do
    case "$word" in
    sched_window=?*) window=${word#sched_window=} ;;
    esac
done

# Microseconds of the realtime clock (as bench.sh).
now_us() {
    set -- $(adjtimex | sed -n 's/.*time\.tv_sec: *//p; s/.*time\.tv_usec: *//p')
    echo $(($1 * 1000000 + $2))
}
cpu_ns() { oxl list --json "$1" | sed -n 's/.*"cpu_time_ns": *\([0-9]*\).*/\1/p' | head -n 1; }
counters() {
    echo "sched-bench: counters $1"
    sleep 3
}
# Ten `oxl list`, each timed (microseconds, a clock read included).
ten_lists() {
    times=""
    i=0
    while [ "$i" -lt 10 ]; do
        t0=$(now_us)
        oxl list > /dev/null
        t1=$(now_us)
        times="$times $((t1 - t0))"
        i=$((i + 1))
    done
    echo "$times"
}

echo "sched-bench: start (window $window s)"
t0=$(now_us)
t1=$(now_us)
echo "sched-bench: clock overhead_us=$((t1 - t0))"

# 1. Weights 256:512 on pCPU 1.
oxl create /etc/oxen/spin-w256.cfg && oxl create /etc/oxen/spin-w512.cfg
sleep 2
a0=$(cpu_ns spin-w256); b0=$(cpu_ns spin-w512); t0=$(now_us)
counters weights-start
sleep "$window"
counters weights-end
a1=$(cpu_ns spin-w256); b1=$(cpu_ns spin-w512); t1=$(now_us)
echo "sched-bench: weights wall_us=$((t1 - t0)) w256_ns=$((a1 - a0)) w512_ns=$((b1 - b0))"
oxl destroy spin-w256; oxl destroy spin-w512

# 2. dom0 alone on pCPU 0, then beside spin-cli.
echo "sched-bench: oxl-list alone us=$(ten_lists)"
oxl create /etc/oxen/spin-cli.cfg
sleep 2
counters cli-start
echo "sched-bench: oxl-list beside spin-cli us=$(ten_lists)"
counters cli-end
echo "sched-bench: spin-cli ran_ns=$(cpu_ns spin-cli)"
oxl destroy spin-cli
echo "sched-bench: done"
