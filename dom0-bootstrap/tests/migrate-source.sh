#!/bin/sh
# Live migration between two Oxen hosts (issue 12), host A's side, run in
# dom0 by `dom0-migrate-svm` (B runs migrate-target.sh): a minimal domU
# ticking every 500 ms goes from A to B with `oxl migrate`, and B sends it
# back. Checked here: refusals that leave it running, the migration's rounds
# and downtime, the domain gone and memory back to the byte after it left,
# its counter going on when it returns (B tells the last tick it printed
# there), then destroyed with memory back.
. /usr/lib/oxen/tests/migrate-lib.sh
echo "migrate: start (host A, 10.0.3.1)"
free0=$(free_kib)
peer_up() { ping -c 1 -W 1 10.0.3.2 > /dev/null 2>&1; }
check "migrate: host B answers" "no ping reply from 10.0.3.2" wait_for 300 peer_up

check "migrate: create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "migrate: it ticks" "no ticks" wait_for 30 ticked_past minimal-1 2

# Refused, the domain running on: no receiver on that port, dom0, a bad host.
oxl migrate minimal-1 10.0.3.2:9 > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: a host with no receiver is refused" "status $s" [ "$s" -ne 0 ]
check "migrate: it says why" "see above" grep -q "cannot connect to 10.0.3.2 port 9" /tmp/r.out
oxl migrate Domain-0 10.0.3.2 > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: dom0 is refused" "status $s" grep -q "it is dom0" /tmp/r.out
oxl migrate minimal-1 10.0.3.2:x > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: a bad HOST:PORT is refused" "status $s" grep -q "is not HOST or HOST:PORT" /tmp/r.out
t=$(last_tick minimal-1)
check "migrate: minimal-1 runs on after the refusals" "no tick past $t" wait_for 10 ticked_past minimal-1 "$t"

# A to B.
follow minimal-1 /tmp/follow.out
if ! migrate_to minimal-1 10.0.3.2; then
    bad "migrate: oxl migrate minimal-1 to B" "see above"
    echo "migrate: done, $failed failed"
    exit 1
fi
ok "migrate: oxl migrate minimal-1 to B"
left migrate minimal-1 10.0.3.2

# B to A: received here.
oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1; s=$?; cat /tmp/recv.out
check "migrate: oxl migrate-receive took minimal-1 back" "status $s" [ "$s" -eq 0 ]
[ "$s" -eq 0 ] || { echo "migrate: done, $failed failed"; exit 1; }
arrived migrate minimal-1 10.0.3.2

check "migrate: destroy it" "oxl destroy failed" oxl destroy minimal-1
check "migrate: memory back at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "migrate: done, $failed failed"
