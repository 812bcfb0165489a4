#!/bin/sh
# Measurements made inside dom0 for `cargo xtask bench` (xtask/src/bench.rs), which
# boots dom0 with `dom0_run=/usr/lib/oxen/tests/bench.sh` and parses the lines
# starting with "bench: ". By hand: run it in dom0's shell with no domUs.
#
# 1. oxen-null-bench: null hypercalls from user space through /dev/oxen, before
#    any domU exists (nothing else runs).
# 2. ROUNDS times: `oxl create` of minimal-1 until its first console line, timed
#    in dom0 in microseconds (busybox's date has no %N; its adjtimex prints the
#    time in us); the hypercalls create made (OXL_STATS=1); the VM exits the
#    domU had taken when the line was seen (DomainInfo.exits from
#    `oxl list --json` right after it: approximate); then destroy.
# 3. The same clock around `oxl info`, a command of two hypercalls, as a
#    baseline for what starting oxl costs on this machine, and around nothing,
#    for what reading the clock costs.
rounds=${1:-5}

# Microseconds of the realtime clock (dom0 runs no NTP: it only moves forward).
now_us() {
    set -- $(adjtimex | sed -n 's/.*time\.tv_sec: *//p; s/.*time\.tv_usec: *//p')
    echo $(($1 * 1000000 + $2))
}
# A field of `oxl list --json DOM`'s object.
json_field() { oxl list --json "$1" | sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" | head -n 1; }

echo "bench: start (clock adjtimex, 1 us; $rounds rounds)"
/usr/lib/oxen/null-bench 10000 | sed 's/^oxen-null-bench: /bench: null-bench /'

for i in 1 2 3 4 5; do
    t0=$(now_us)
    t1=$(now_us)
    echo "bench: clock overhead_us=$((t1 - t0))"
done

i=1
while [ "$i" -le "$rounds" ]; do
    t0=$(now_us)
    OXL_STATS=1 oxl create /etc/oxen/minimal-1.cfg > /dev/null 2> /tmp/bench.stats
    t1=$(now_us)
    # The first line, as soon as `oxl console` (which polls every 50 ms) shows it.
    line=$(oxl console minimal-1 < /dev/null | { IFS= read -r l; echo "$(now_us) $l"; })
    exits=$(json_field minimal-1 exits)
    t2=${line%% *}
    echo "bench: create round $i create_us=$((t1 - t0)) first_line_us=$((t2 - t0)) exits=$exits line=${line#* }"
    echo "bench: create round $i $(sed -n 's/^oxl: //p' /tmp/bench.stats)"
    oxl destroy minimal-1
    i=$((i + 1))
done
rm -f /tmp/bench.stats

# Baseline: oxl itself (exec, open /dev/oxen, VERSION, PHYS_INFO), 10 times.
t0=$(now_us)
for i in 1 2 3 4 5 6 7 8 9 10; do oxl info > /dev/null; done
t1=$(now_us)
echo "bench: oxl-info 10 runs us=$((t1 - t0)) $(OXL_STATS=1 oxl info 2>&1 >/dev/null | sed -n 's/^oxl: //p')"
echo "bench: done"
