#!/bin/sh
# Shared by migrate-source.sh and migrate-target.sh (sourced): the two dom0s
# of `dom0-migrate-svm`, hosts A (10.0.3.1, the test's machine) and B
# (10.0.3.2, its peer), joined by a wire. They tell each other a tick number
# over TCP port 8003 (busybox nc).
. /usr/lib/oxen/tests/lib.sh
first_tick() { oxl console --dump "$1" | sed -n 's/.*minimal: tick \([0-9]*\).*/\1/p' | head -n 1; }
settled() { [ "$(free_kib)" = "$free0" ]; }

# follow DOM FILE: copies DOM's console into FILE until the domain ends here
# (a migration destroys it once the other host runs it), so FILE's last tick
# is the last one the domain printed on this host.
follow() {
    rm -f /tmp/follow.in
    mkfifo /tmp/follow.in
    oxl console "$1" < /tmp/follow.in > "$2" 2>&1 &
    exec 9> /tmp/follow.in
}
unfollow() { exec 9>&-; }

# migrate_to DOM HOST: oxl migrate, tried again while the other host's
# receiver is not listening yet (at most 120 s); its output in /tmp/migrate.out.
migrate_to() {
    local left=120
    while :; do
        oxl migrate "$1" "$2" > /tmp/migrate.out 2>&1 && { cat /tmp/migrate.out; return 0; }
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
# hear: what the other host tells (waits up to 600 s).
hear() { timeout 600 nc -l -p 8003 | head -n 1; }

# arrived ROLE DOM FROM: DOM came from host FROM, which tells the last tick it
# printed there; DOM's first tick here must be the next (none repeated or
# skipped), then it ticks on.
arrived() {
    local role=$1 dom=$2 from=$3 last first
    check "$role: $dom runs here" "state $(field "$dom" 5)" wait_for 10 running "$dom"
    last=$(hear)
    check "$role: it ticks here" "no tick" wait_for 20 ticked_past "$dom" 0
    first=$(first_tick "$dom")
    echo "$role: $dom's last tick on $from: $last, its first here: $first"
    next() { [ -n "$last" ] && [ -n "$first" ] && [ "$first" -eq $((last + 1)) ]; }
    check "$role: its counter goes on across the migration (no tick repeated or skipped)" "first tick $first after $last" next
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
    last=$(sed -n 's/.*minimal: tick \([0-9]*\).*/\1/p' /tmp/follow.out | tail -n 1)
    echo "$role: $dom's last tick here: $last"
    check "$role: told $to the last tick" "nc to $to:8003 failed" tell "$to" "$last"
}
gone_follow() { ! pgrep -f "oxl console" > /dev/null; }
