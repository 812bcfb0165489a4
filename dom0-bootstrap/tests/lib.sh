#!/bin/sh
# Shared by the dom0 test scripts here (sourced, not run): the check/ok/FAILED
# lines the system tests match, and reading domains through oxl.
failed=0
ok() { echo "check: $1: ok"; }
bad() { echo "check: $1: FAILED ($2)"; failed=$((failed + 1)); }
# The helpers keep their variables `local` (busybox sh has it): a global of
# the same name in a script, or in the command wait_for polls, would change
# under them (ticked_past's reading once became wait_for's count of seconds
# left, so a domU not ticking yet ended a 60 s wait after one try).
# check NAME WHY-IF-NOT COMMAND...
check() { local name=$1 why=$2; shift 2; if "$@"; then ok "$name"; else bad "$name" "$why"; fi; }
# wait_for SECONDS COMMAND...: true as soon as COMMAND is, false after SECONDS.
# Its arguments are expanded once: what it polls must be a function.
wait_for() { local left=$1; shift; while [ "$left" -gt 0 ]; do "$@" && return 0; sleep 1; left=$((left - 1)); done; "$@"; }
free_kib() { oxl info --json | sed -n 's/.*"free_kib": *\([0-9]*\).*/\1/p'; }
# Columns of `oxl list`: Name ID Mem(MiB) VCPUs State Time(s).
field() { oxl list | awk -v n="$1" -v f="$2" '$1 == n { print $f }'; }
gone() { [ -z "$(field "$1" 2)" ]; }
# What dom0 was told to skip its Linux domUs skip too: " cryptomgr.notests"
# (the self-test of every crypto algorithm, about 50 s of a boot under Bochs)
# when dom0's command line has it, else nothing. For scripts that write a
# domU's `extra` themselves.
domu_skips() { case " $(cat /proc/cmdline) " in *" cryptomgr.notests "*) echo " cryptomgr.notests" ;; esac; }
# The Linux domU's config: /etc/oxen/linux.cfg, or a copy of it that boots the
# same kernel uncompressed (/usr/lib/oxen/linux/vmlinux) when dom0's command
# line has linux_kernel=vmlinux (the Bochs tests, where the guest's own XZ
# unpacking of the bzImage takes about 230 s of every boot), with
# `domu_skips` added to its command line.
linux_cfg() {
    local cmdline skips out=/tmp/linux-base.cfg
    cmdline=" $(cat /proc/cmdline) "
    skips=$(domu_skips)
    case "$cmdline" in
    *" linux_kernel=vmlinux "*) ;;
    *) [ -n "$skips" ] || { echo /etc/oxen/linux.cfg; return; } ;;
    esac
    cp /etc/oxen/linux.cfg "$out"
    case "$cmdline" in *" linux_kernel=vmlinux "*)
        sed -i 's|^kernel = .*|kernel = "/usr/lib/oxen/linux/vmlinux"|' "$out" ;;
    esac
    [ -z "$skips" ] || sed -i "s/^extra = \"\\(.*\\)\"\$/extra = \"\\1$skips\"/" "$out"
    echo "$out"
}
# The minimal guest's last "minimal: tick N", from its console ring.
last_tick() { oxl console --dump "$1" | sed -n 's/.*minimal: tick \([0-9]*\).*/\1/p' | tail -n 1; }
ticked_past() { local tick; tick=$(last_tick "$1"); [ -n "$tick" ] && [ "$tick" -gt "$2" ]; }
# Both readings exist and are equal (no tick in between).
same_tick() { [ -n "$1" ] && [ "$1" = "$2" ]; }
# Both domains' CPU time in ns from one listing (the same instant): "A B".
cpu_pair() { oxl list --json "$1" "$2" | awk -v a="\"$1\"" -v b="\"$2\"" '
    { n = $0; sub(/.*"cpu_time_ns": */, "", n); sub(/[^0-9].*/, "", n) }
    index($0, "\"name\": " a) { ta = n } index($0, "\"name\": " b) { tb = n }
    END { print ta, tb }'; }
# CPU time two domains got over SECS seconds, in ns resolution (oxl list's
# table has 0.1 s, ±6 % of a 12 s share): "A_SECONDS B_SECONDS B/A".
share_ratio() {
    local p0 p1
    p0=$(cpu_pair "$1" "$2"); sleep "$3"; p1=$(cpu_pair "$1" "$2")
    echo "$p0 $p1" | awk '{ a = ($3 - $1) / 1e9; b = ($4 - $2) / 1e9; printf "%.3f %.3f %.3f\n", a, b, (a > 0 ? b / a : 0) }'
}
# A Linux domU (linux.cfg's rcS) is at its shell: its banner, then a prompt.
linux_booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on .* CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }
# The "COUNT n" counter of linux-save.sh and migrate-*.sh, run in a Linux
# domU's console shell: (i=0; while :; do i=$((i + 1)); echo "COUNT $i"; usleep 100000; done) &
# counts FILE: the counter's values in FILE (a console dump), one a line, from
# whole lines only: the first line may be the end of one the ring no longer
# holds whole, and a last line without its newline may still be growing. A
# value may follow other output on its line: the shell's prompt ("domU:~#
# ESC[6nCOUNT 2": the prompt of the command that started the counter can come
# after its first value) or the echo of a command being typed ("echo
# checkpoinCOUNT 100"). The counter writes each "COUNT n" line in one write,
# so what comes between two of its writes can only precede a value.
counts() {
    tr -d '\r' < "$1" > /tmp/counts.lines
    [ -n "$(tail -c 1 /tmp/counts.lines)" ] && sed -i '$d' /tmp/counts.lines
    sed -n 's/^.*COUNT \([0-9][0-9]*\)$/\1/p' /tmp/counts.lines
}
# consecutive: stdin's numbers each the one before plus 1 (and some there).
consecutive() {
    awk 'NR > 1 && $1 != prev + 1 { print "counter: " prev " then " $1; bad = 1 } { prev = $1; n++ }
         END { exit bad || n < 2 }'
}
