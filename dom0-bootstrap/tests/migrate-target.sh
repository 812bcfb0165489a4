#!/bin/sh
# Live migration between two Oxen hosts (issue 12), host B's side (the peer
# machine of `dom0-migrate-svm`; A runs migrate-source.sh): receives
# mig from A, checks that it runs and its counter goes on (A tells the
# last tick it printed there), then migrates it back to A and checks that it
# left: gone, memory back to the byte.
. /usr/lib/oxen/tests/migrate-lib.sh
echo "migrate-peer: start (host B, 10.0.3.2)"
free0=$(free_kib)
oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1; s=$?; cat /tmp/recv.out
check "migrate-peer: oxl migrate-receive took mig" "status $s" [ "$s" -eq 0 ]
[ "$s" -eq 0 ] || { echo "migrate-peer: done, $failed failed"; exit 1; }
arrived migrate-peer mig 10.0.3.1

follow mig /tmp/follow.out
if ! migrate_to mig 10.0.3.1; then
    bad "migrate-peer: oxl migrate mig back to A" "see above"
    echo "migrate-peer: done, $failed failed"
    exit 1
fi
ok "migrate-peer: oxl migrate mig back to A"
left migrate-peer mig 10.0.3.1

# The Linux domU: a migration A gives up (it does not converge) leaves
# nothing here; the next one brings it, counting on.
oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1; s=$?; cat /tmp/recv.out
check "migrate-peer: a migration the sender gave up fails here" "status $s" [ "$s" -ne 0 ]
check "migrate-peer: it leaves no domain" "$lmig listed" gone "$lmig"
check "migrate-peer: memory back after it" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
oxl migrate-receive --timeout 900 > /tmp/recv.out 2>&1; s=$?; cat /tmp/recv.out
check "migrate-peer: oxl migrate-receive took $lmig" "status $s" [ "$s" -eq 0 ]
check "migrate-peer: $lmig runs here" "state $(field "$lmig" 5)" wait_for 10 running "$lmig"
hear_file /tmp/a.tail
skew_a=$(hear)
c=$(counts /tmp/a.tail | tail -n 1)
check "migrate-peer: its counter goes on here" "no COUNT past ${c:-?}" wait_for 30 counted_past "${c:-0}"
oxl console --dump "$lmig" > /tmp/b.ring
cat /tmp/a.tail /tmp/b.ring > /tmp/joined
counts /tmp/joined > /tmp/joined.seq
echo "migrate-peer: COUNT $(head -n 1 /tmp/joined.seq) to $(tail -n 1 /tmp/joined.seq) across the move ($c the last on A)"
has_next() { grep -qx "$((c + 1))" /tmp/joined.seq; }
check "migrate-peer: its counter goes on across the move, none repeated or skipped" "see the lines above" consecutive < /tmp/joined.seq
check "migrate-peer: the value after A's last is here" "no $((c + 1))" has_next
check "migrate-peer: its shell answers" "no answer" ask_for DATE 'echo "DATE $(date +%s) END"'
d=$(answer DATE) h=$(date +%s)
skew=$((d - h))
echo "migrate-peer: its clock is this dom0's $skew s, A's dom0's $skew_a s before the move"
# Both dom0s keep the RTC's time (QEMU gives both the host's); the move may
# stop the guest's clock for its downtime, not more.
near() { [ -n "$d" ] && [ -n "$skew_a" ] && [ $((skew - skew_a)) -le 2 ] && [ $((skew_a - skew)) -le 2 ]; }
check "migrate-peer: its clock keeps its time across the move (within 2 s)" "$skew s here, $skew_a s on A" near
check "migrate-peer: destroy $lmig" "oxl destroy failed" oxl destroy "$lmig"
check "migrate-peer: memory back at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "migrate-peer: done, $failed failed"
