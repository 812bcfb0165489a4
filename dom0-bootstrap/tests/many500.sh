#!/bin/sh
# Hundreds of domUs on one host, run in dom0 by the system test
# `dom0-500-domus-svm` and by `cargo xtask bench --only scale`. Creates N (default
# 500) minimal 4 MiB domUs (/etc/oxen/minimal-4m.cfg) with `oxl create` one
# after another, checks all are listed and each one ticks on its console (its
# ring shows a "minimal: tick N" line), destroys them all and checks free
# memory is back to the byte.
#
# Along the way it prints "many500: cost ..." lines with the time of a create,
# of `oxl list` (all domains, and one domain by name) and of a destroy around
# the 10th, 100th and 500th domU, in microseconds of dom0's clock (five
# operations each, their mean): figures for the bench, which the test does
# not judge. When the bench asks (`many500: counters NAME` lines), the
# hypervisor prints its scheduler counters.
# Usage: many500.sh [N [quick]]; `quick` (the system test) skips the pauses
# for the counters.
. "$(dirname "$0")/lib.sh"
n=${1:-500}
quick=${2:-}

# Microseconds of the realtime clock (busybox's date has no %N; see bench.sh).
now_us() {
    set -- $(adjtimex | sed -n 's/.*time\.tv_sec: *//p; s/.*time\.tv_usec: *//p')
    echo $(($1 * 1000000 + $2))
}
# The points where costs are measured: the 5 operations ending at each.
at_point() { [ "$1" = 10 ] || [ "$1" = 100 ] || [ "$1" = "$n" ]; }
in_window() { for p in 10 100 "$n"; do [ "$1" -gt $((p - 5)) ] && [ "$1" -le "$p" ] && return 0; done; return 1; }

# Forks are what a shell loop of 500 pays most for under an emulator: the
# configs are written with shell built-ins, and the clock is read only around
# the operations measured.
tmpl=$(sed -e 's/^name = .*/name = "NAME"/' /etc/oxen/minimal-4m.cfg)
free0=$(free_kib)
echo "many500: start, $n domUs, $free0 KiB free"
i=1
created=0
sum=0
while [ "$i" -le "$n" ]; do
    printf '%s\n' "${tmpl%%NAME*}m500-$i${tmpl#*NAME}" > "/tmp/m500-$i.cfg"
    timed=
    if in_window "$i"; then timed=1; t0=$(now_us); fi
    if oxl create "/tmp/m500-$i.cfg" > /tmp/m500.out 2>&1; then
        created=$((created + 1))
    else
        echo "many500: create m500-$i: $(cat /tmp/m500.out)"
    fi
    if [ -n "$timed" ]; then t1=$(now_us); sum=$((sum + t1 - t0)); fi
    if at_point "$i"; then
        echo "many500: cost create at=$i us=$((sum / 5))"
        sum=0
        # oxl list: the whole table (O(n) by nature), then one domain.
        for what in all one; do
            s=0
            for k in 1 2 3 4 5; do
                t0=$(now_us)
                if [ "$what" = all ]; then oxl list > /dev/null; else oxl list "m500-$i" > /dev/null; fi
                t1=$(now_us)
                s=$((s + t1 - t0))
            done
            echo "many500: cost list-$what at=$i us=$((s / 5))"
        done
        t0=$(now_us); t1=$(now_us)
        echo "many500: cost clock at=$i us=$((t1 - t0))"
        # The hypervisor's counters, twice 5 s apart (the bench sends the key).
        if [ -z "$quick" ]; then
            echo "many500: counters a$i"
            sleep 5
            echo "many500: counters b$i"
            sleep 1
        fi
    fi
    i=$((i + 1))
done
check "$n domUs created" "only $created" [ "$created" = "$n" ]
listed=$(oxl list | grep -c '^m500-')
echo "many500: $listed domUs listed"
check "all $n listed" "$listed listed" [ "$listed" = "$n" ]

# Each one's console ring shows a tick (they tick every 5 s). Up to 5 min:
# 500 guests printing their first lines through the rate-limited console,
# on an emulator whose host may stall (seen: a BLOCK taking 270 ms).
has_tick() { case "$(oxl console --dump "$1")" in *"minimal: tick "[0-9]*) return 0 ;; esac; return 1; }
all_ticked() {
    left=
    for j in $todo; do has_tick "m500-$j" || left="$left $j"; done
    todo=$left
    [ -z "$todo" ]
}
todo=$(seq 1 "$n" | tr '\n' ' ')
wait_for 300 all_ticked
check "every one of the $n ticks" "not ticking: $todo" [ -z "$todo" ]

# Destroyed from the last: the costs at 500, 100 and 10 domUs.
i=$n
sum=0
while [ "$i" -ge 1 ]; do
    timed=
    if in_window "$i"; then timed=1; t0=$(now_us); fi
    oxl destroy "m500-$i" > /dev/null || echo "many500: destroy m500-$i failed"
    if [ -n "$timed" ]; then
        t1=$(now_us)
        sum=$((sum + t1 - t0))
        for p in 10 100 "$n"; do
            if [ "$i" = $((p - 4)) ]; then echo "many500: cost destroy at=$p us=$((sum / 5))"; sum=0; fi
        done
    fi
    i=$((i - 1))
done
left=$(oxl list | grep -c '^m500-')
check "all destroyed" "$left left" [ "$left" = 0 ]
# A dying domain gives its memory back when its CPU lets go of its vCPU.
back() { [ "$(free_kib)" = "$free0" ]; }
wait_for 10 back
free1=$(free_kib)
check "free memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
rm -f /tmp/m500*
echo "many500: done, $failed failed"
