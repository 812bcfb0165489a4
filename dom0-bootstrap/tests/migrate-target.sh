#!/bin/sh
# Live migration between two Oxen hosts (issue 12), host B's side (the peer
# machine of `dom0-migrate-svm`; A runs migrate-source.sh): receives
# minimal-1 from A, checks that it runs and its counter goes on (A tells the
# last tick it printed there), then migrates it back to A and checks that it
# left: gone, memory back to the byte.
. /usr/lib/oxen/tests/migrate-lib.sh
echo "migrate-peer: start (host B, 10.0.3.2)"
free0=$(free_kib)
oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1; s=$?; cat /tmp/recv.out
check "migrate-peer: oxl migrate-receive took minimal-1" "status $s" [ "$s" -eq 0 ]
[ "$s" -eq 0 ] || { echo "migrate-peer: done, $failed failed"; exit 1; }
arrived migrate-peer minimal-1 10.0.3.1

follow minimal-1 /tmp/follow.out
if ! migrate_to minimal-1 10.0.3.1; then
    bad "migrate-peer: oxl migrate minimal-1 back to A" "see above"
    echo "migrate-peer: done, $failed failed"
    exit 1
fi
ok "migrate-peer: oxl migrate minimal-1 back to A"
left migrate-peer minimal-1 10.0.3.1
echo "migrate-peer: done, $failed failed"
