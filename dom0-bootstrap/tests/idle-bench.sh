#!/bin/sh
# Idle exits for `cargo xtask bench --only idle` (xtask/src/bench_exits.rs), which
# boots Oxen with `exit_tally_s=N` (every vCPU logs its exits by reason every N
# seconds) and dom0 with `dom0_run=/usr/lib/oxen/tests/idle-bench.sh`, then
# reads the lines starting with "idle-bench: " and the hypervisor's tallies.
#
# 1. dom0 alone at its shell's prompt: a window of WINDOW seconds of nothing.
# 2. A minimal test domU that sleeps (SCHED_OP block, one line an hour), booted,
#    then the same window; then twice more with `oxl console` attached to it:
#    on dom0's event line (console_events) and polling (console_poll).
# 3. If given `linux`: a Linux domU at its shell (/etc/oxen/linux.cfg), the same.
# Each window is timed with dom0's clock and the domains' exit counts
# (`oxl list --json`) read before and after it.
# The window (seconds) and `linux`: arguments, or idle_window= / idle_linux= on
# dom0's kernel command line (the kernel passes them to init's environment).
window=${1:-${idle_window:-20}}
linux=${2:-${idle_linux:-}}

now_us() {
    set -- $(adjtimex | sed -n 's/.*time\.tv_sec: *//p; s/.*time\.tv_usec: *//p')
    echo $(($1 * 1000000 + $2))
}
json_field() { oxl list --json "$1" | sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" | head -n 1; }

# One window: "idle-bench: window NAME us=T dom0=E0 domu=E1" (exit counts over it).
measure() {
    name=$1 dom=$2
    a0=$(json_field 0 exits); u0=0
    [ -n "$dom" ] && u0=$(json_field "$dom" exits)
    echo "idle-bench: window $name start"
    t0=$(now_us)
    sleep "$window"
    t1=$(now_us)
    echo "idle-bench: window $name end"
    a1=$(json_field 0 exits); u1=0
    [ -n "$dom" ] && u1=$(json_field "$dom" exits)
    echo "idle-bench: window $name us=$((t1 - t0)) dom0=$((a1 - a0)) domu=$((u1 - u0))"
}

echo "idle-bench: start (window ${window} s)"
# Let dom0's boot settle (module loads, the shell's first prompt) first.
sleep 5
measure dom0 ""

cat > /tmp/idle.cfg <<CFG
name = "idle"
memory = 16
vcpus = 1
kernel = "/usr/lib/oxen/guests/minimal.elf"
extra = "interval_ms=3600000"
on_poweroff = "destroy"
on_reboot = "destroy"
on_crash = "destroy"
CFG
oxl create /tmp/idle.cfg > /dev/null
# Booted once its first line is out (`oxl console` would wait for more).
i=0
while [ $i -lt 60 ] && ! oxl console --dump idle 2>/dev/null | grep -q "minimal: domain"; do
    sleep 1
    i=$((i + 1))
done
echo "idle-bench: idle domU says: $(oxl console --dump idle | grep -m 1 'minimal: domain')"
measure minimal idle

# `oxl console` attached to that quiet domU (its input a FIFO kept open, so it
# stays attached): sleeping in poll(2) on dom0's event line, then looking
# every 50 ms as without one (OXL_NO_EVENTS=1, how oxl worked before).
console_window() {
    mkfifo /tmp/idle-in
    env $2 oxl console idle < /tmp/idle-in > /dev/null 2>&1 &
    pid=$!
    exec 3> /tmp/idle-in
    sleep 2
    measure "$1" idle
    kill "$pid"
    exec 3>&-
    wait "$pid" 2> /dev/null
    rm -f /tmp/idle-in
}
console_window console_events OXL_NO_EVENTS=0
console_window console_poll OXL_NO_EVENTS=1
oxl destroy idle

if [ "$linux" = linux ]; then
    oxl create /etc/oxen/linux.cfg > /dev/null
    # At its shell: wait for rcS's banner, then let the boot's tail settle.
    i=0
    while [ $i -lt 600 ] && ! oxl console --dump linux 2>/dev/null | grep -q "Oxen domU:"; do
        sleep 1
        i=$((i + 1))
    done
    sleep 10
    echo "idle-bench: linux domU up after ${i} s"
    measure linux linux
    oxl destroy linux
fi
echo "idle-bench: done"
