#!/bin/sh
# Shared by migrate-source.sh and migrate-target.sh (sourced): the two dom0s
# of `dom0-migrate-svm`, hosts A (10.0.3.1, the test's machine) and B
# (10.0.3.2, its peer), joined by a wire. The domU, mig, is minimal.elf
# with show_tsc: each line is `minimal: tick N tsc T`, T its TSC at the tick.
# The hosts tell each other the last line the domain printed before it left,
# over TCP port 8003 (busybox nc).
. /usr/lib/oxen/tests/lib.sh
# The first "N T" of DOM's console ring.
first_tick_tsc() { oxl console --dump "$1" | sed -n 's/.*minimal: tick \([0-9]*\) tsc \([0-9]*\).*/\1 \2/p' | head -n 1; }
# The config it runs with (carried in the stream to the other host).
cat > /tmp/mig.cfg <<'CFG'
name = "mig"
memory = 16
vcpus = 1
kernel = "/usr/lib/oxen/guests/minimal.elf"
extra = "interval_ms=500 show_tsc"
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "destroy"
CFG
settled() { [ "$(free_kib)" = "$free0" ]; }

# follow DOM FILE: copies DOM's console into FILE until the domain ends here
# (a migration destroys it once the other host runs it), so FILE's last tick
# is the last one the domain printed on this host.
follow() {
    rm -f /tmp/follow.in
    mkfifo /tmp/follow.in
    oxl console "$1" < /tmp/follow.in > "$2" 2>&1 &
    follow_pid=$!
    exec 9> /tmp/follow.in
}
unfollow() { exec 9>&-; }

# migrate_to [OPTION...] DOM HOST: oxl migrate, tried again while the other
# host's receiver is not listening yet (at most 120 s); its output in
# /tmp/migrate.out.
migrate_to() {
    local left=120
    while :; do
        oxl migrate "$@" > /tmp/migrate.out 2>&1 && { cat /tmp/migrate.out; return 0; }
        grep -q "cannot connect" /tmp/migrate.out && [ "$left" -gt 0 ] || { cat /tmp/migrate.out; return 1; }
        sleep 1
        left=$((left - 1))
    done
}

# tell HOST TEXT: sends TEXT to HOST's `hear` (tried for 120 s).
tell() {
    local left=120
    until echo "$2" | nc "$1" 8003 2>/dev/null; do
        [ "$left" -gt 0 ] || return 1
        sleep 1
        left=$((left - 1))
    done
}
# hear: what the other host tells (waits up to 600 s); hear_file FILE: all of it into FILE.
hear() { timeout 600 nc -l -p 8003 | head -n 1; }
hear_file() { timeout 600 nc -l -p 8003 > "$1"; }
# tell_file HOST FILE: sends FILE to HOST's hear_file (tried for 120 s).
tell_file() {
    local left=120
    until nc "$1" 8003 < "$2" 2>/dev/null; do
        [ "$left" -gt 0 ] || return 1
        sleep 1
        left=$((left - 1))
    done
}

# The Linux domU of the second part: linux.cfg's (2 vCPUs, 128 MiB, its root
# in its RAM) as lmig, its console quiet but for the shell and a counter.
lmig=lmig
sed -e "s/^name = .*/name = \"$lmig\"/" \
    -e "s/^extra = .*/extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet\"/" \
    "$(linux_cfg)" > /tmp/$lmig.cfg
out=/tmp/lmig.out
# ask CMD: types CMD into lmig's console; what came back in $out.
ask() { printf '%s\n' "$1" | oxl console "$lmig" > "$out" 2>&1; }
answer() { tr -d '\r' < "$out" | sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" | tail -n 1; }
got() { oxl console --dump "$lmig" > "$out" 2>&1; [ -n "$(answer "$1")" ]; }
ask_for() { ask "$2"; wait_for 120 got "$1"; }
last_count() { oxl console --dump "$lmig" > /tmp/lmig.now; counts /tmp/lmig.now | tail -n 1; }
counted_past() { local c; c=$(last_count); [ -n "$c" ] && [ "$c" -gt "$1" ]; }

# arrived ROLE DOM FROM: DOM came from host FROM, which tells the last tick it
# printed there and its TSC then; DOM's first tick here must be the next (none
# repeated or skipped), its TSC after the last one's by about one interval:
# the guest's TSC goes on from where it was, whatever this host's TSC reads
# (the two machines booted at different times); then it ticks on.
arrived() {
    local role=$1 dom=$2 from=$3 last last_tsc first first_tsc khz gap_ms
    check "$role: $dom runs here" "state $(field "$dom" 5)" wait_for 10 running "$dom"
    set -- $(hear)
    last=$1 last_tsc=$2
    check "$role: it ticks here" "no tick" wait_for 20 ticked_past "$dom" 0
    set -- $(first_tick_tsc "$dom")
    first=$1 first_tsc=$2
    echo "$role: $dom's last tick on $from: $last (tsc $last_tsc), its first here: $first (tsc $first_tsc)"
    next() { [ -n "$last" ] && [ -n "$first" ] && [ "$first" -eq $((last + 1)) ]; }
    check "$role: its counter goes on across the migration (no tick repeated or skipped)" "first tick $first after $last" next
    khz=$(oxl info --json | sed -n 's/.*"tsc_khz": *\([0-9]*\).*/\1/p')
    gap_ms=$(( (${first_tsc:-0} - ${last_tsc:-0}) / ${khz:-1} ))
    echo "$role: the guest's TSC went on $gap_ms ms from its last tick on $from to its first here (interval 500 ms)"
    tsc_on() { [ -n "$first_tsc" ] && [ -n "$last_tsc" ] && [ "$first_tsc" -gt "$last_tsc" ] && [ "$gap_ms" -le 1000 ]; }
    check "$role: its TSC goes on from the other host's (one interval on, not back)" "$gap_ms ms" tsc_on
    check "$role: it keeps ticking" "no tick past $((first + 2))" wait_for 20 ticked_past "$dom" $((first + 2))
}
running() { [ "$(field "$1" 5)" = "running" ]; }

# left ROLE DOM TO: DOM was migrated away to TO: gone here, memory back, and
# TO told the last tick DOM printed here.
left() {
    local role=$1 dom=$2 to=$3 last
    check "$role: $dom is gone here" "still listed" gone "$dom"
    check "$role: memory back here" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
    unfollow
    wait_for 10 gone_follow
    last=$(sed -n 's/.*minimal: tick \([0-9]*\) tsc \([0-9]*\).*/\1 \2/p' /tmp/follow.out | tail -n 1)
    echo "$role: $dom's last tick here: $last"
    check "$role: told $to the last tick" "nc to $to:8003 failed" tell "$to" "$last"
}
# The follower (its pid kept by `follow`: this busybox has no pgrep) has
# exited: no such process, or a zombie the shell has not reaped yet.
gone_follow() {
    [ ! -e "/proc/$follow_pid/stat" ] || grep -q '^[0-9]* (.*) Z ' "/proc/$follow_pid/stat" 2> /dev/null
}

# must ROLE NAME COMMAND...: check NAME; if COMMAND failed, ROLE's script ends
# here (what follows needs it).
must() {
    local role=$1 name=$2
    shift 2
    "$@" && { ok "$role: $name"; return 0; }
    bad "$role: $name" "see above"
    echo "$role: done, $failed failed"
    exit 1
}

# linux_left ROLE TO [DOM]: DOM (lmig) was migrated away to TO: gone here, memory back,
# and TO sent the end of its console here (its last COUNT lines).
linux_left() {
    local role=$1 to=$2 lmig=${3:-$lmig}
    check "$role: $lmig is gone here" "still listed" gone "$lmig"
    check "$role: memory back after $lmig left" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
    unfollow
    wait_for 10 gone_follow
    tail -c 600 /tmp/follow.out > /tmp/follow.tail
    check "$role: sent $to the end of its console" "nc to $to:8003 failed" tell_file "$to" /tmp/follow.tail
}

# linux_arrived ROLE FROM [DOM]: DOM (lmig) came from FROM, which sends the end of its
# console: its counter goes on here from FROM's last value, none repeated or
# skipped across the move (FROM's tail joined to this ring), and its shell
# answers.
linux_arrived() {
    local role=$1 from=$2 lmig=${3:-$lmig} c
    check "$role: $lmig runs here" "state $(field "$lmig" 5)" wait_for 10 running "$lmig"
    hear_file /tmp/from.tail
    c=$(counts /tmp/from.tail | tail -n 1)
    check "$role: its counter goes on here" "no COUNT past ${c:-?}" wait_for 30 counted_past "${c:-0}"
    oxl console --dump "$lmig" > /tmp/here.ring
    cat /tmp/from.tail /tmp/here.ring > /tmp/joined
    counts /tmp/joined > /tmp/joined.seq
    echo "$role: COUNT $(head -n 1 /tmp/joined.seq) to $(tail -n 1 /tmp/joined.seq) across the move ($c the last on $from)"
    check "$role: its counter goes on across the move, none repeated or skipped" "see the lines above" consecutive < /tmp/joined.seq
    check "$role: the value after $from's last is here" "no $((c + 1))" grep -qx "$((c + 1))" /tmp/joined.seq
    check "$role: its shell answers" "no answer" ask_for DATE 'echo "DATE $(date +%s) END"'
}

# receive: oxl migrate-receive (waits up to 900 s for a sender), its output shown.
receive() {
    local s
    oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1
    s=$?
    cat /tmp/recv.out
    return $s
}

# The third part: dmig, a Linux domU whose root is the disk both machines see
# (QEMU's shared drive, /dev/vda in both dom0s) and whose vif is on xenbr0,
# the bridge the wire between the hosts is a port of, at 10.0.3.50.
dmig=dmig
dmig_ip=10.0.3.50
sed -e "s/^name = .*/name = \"$dmig\"/" \
    -e "s|^extra = .*|extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet root=/dev/vda rw oxen.ip=$dmig_ip/24\"|" \
    "$(linux_cfg)" > /tmp/$dmig.cfg
echo "disk = ['phy:/dev/vda,xvda,w']" >> /tmp/$dmig.cfg
echo "vif = ['bridge=xenbr0']" >> /tmp/$dmig.cfg
# Each host's oxen-dm opens the shared disk (a block device) with O_DIRECT:
# what one host's dom0 cached of it (at boot, or before the domain left) is
# never what the other host's model reads, so no cache is dropped here.
# as_dmig COMMAND...: COMMAND with the lmig helpers (ask, ask_for, counted_past,
# ...) working on dmig (busybox sh's `local` is seen by the functions called).
as_dmig() { local lmig=$dmig; "$@"; }
# pinging / ping_loss: pings dmig from this dom0 once a second in the
# background; then stops it and prints "SENT RECEIVED".
pinging() { ping "$dmig_ip" > /tmp/ping.out 2>&1 & echo $! > /tmp/ping.pid; }
ping_loss() {
    kill -INT "$(cat /tmp/ping.pid)" 2>/dev/null
    sleep 1
    sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\1 \2/p' /tmp/ping.out
}
