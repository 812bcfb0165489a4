#!/bin/sh
# Live migration between two Oxen hosts (issue 12), host B's side (the peer
# machine of `dom0-migrate-svm`; A runs migrate-source.sh): receives
# mig from A, checks that it runs and its counter goes on (A tells the
# last tick it printed there), then migrates it back to A and checks that it
# left: gone, memory back to the byte. Then the Linux domU: received, its
# counter and clock checked, and sent back to A.
. /usr/lib/oxen/tests/migrate-lib.sh
echo "migrate-peer: start (host B, 10.0.3.2)"
free0=$(free_kib)
must migrate-peer "oxl migrate-receive took mig" receive
arrived migrate-peer mig 10.0.3.1

follow mig /tmp/follow.out
must migrate-peer "oxl migrate mig back to A" migrate_to mig 10.0.3.1
left migrate-peer mig 10.0.3.1

# The Linux domU: a migration A gives up (it does not converge) leaves
# nothing here; the next one brings it, counting on.
receive; s=$?
check "migrate-peer: a migration the sender gave up fails here" "status $s" [ "$s" -ne 0 ]
check "migrate-peer: it leaves no domain" "$lmig listed" gone "$lmig"
check "migrate-peer: memory back after it" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
must migrate-peer "oxl migrate-receive took $lmig" receive
skew_a=$(hear)
linux_arrived migrate-peer 10.0.3.1
d=$(answer DATE) h=$(date +%s)
skew=$((d - h))
echo "migrate-peer: its clock is this dom0's $skew s, A's dom0's $skew_a s before the move"
# Both dom0s keep the RTC's time (QEMU gives both the host's); the move may
# stop the guest's clock for its downtime, not more.
near() { [ -n "$d" ] && [ -n "$skew_a" ] && [ $((skew - skew_a)) -le 2 ] && [ $((skew_a - skew)) -le 2 ]; }
check "migrate-peer: its clock keeps its time across the move (within 2 s)" "$skew s here, $skew_a s on A" near

# Back to A, which checks the counter and the clock again.
follow "$lmig" /tmp/follow.out
must migrate-peer "oxl migrate $lmig back to A" migrate_to "$lmig" 10.0.3.1
linux_left migrate-peer 10.0.3.1

# dmig, on the shared disk with a vif: received from A, its disk and network
# checked here, a file written, sent back.
must migrate-peer "oxl migrate-receive took $dmig" receive
sum0=$(hear)
linux_arrived migrate-peer 10.0.3.1 "$dmig"
check "migrate-peer: its device model went on from the devices' state in the stream" "see /var/log/oxen/$dmig.dm.log" \
    grep -q "resuming 2 device(s) from" /var/log/oxen/$dmig.dm.log
check "migrate-peer: its device model reads and writes the shared disk past dom0's cache" "no O_DIRECT in its xvda line" \
    grep -q "xvda: /dev/vda, .*rw (O_DIRECT)" /var/log/oxen/$dmig.dm.log
check "migrate-peer: its device model announced the guest's MAC" "no 'announced' line" \
    grep -q "announced .* (RARP) on bridge xenbr0" /var/log/oxen/$dmig.dm.log
check "migrate-peer: its file from A reads back from the shared disk" "no answer" \
    as_dmig ask_for SUM1 'echo 3 > /proc/sys/vm/drop_caches; echo "SUM1 $(md5sum /root/data | cut -c 1-32) END"'
same_as_a() { [ -n "$sum0" ] && [ "$(answer SUM1)" = "$sum0" ]; }
check "migrate-peer: it is the same file" "md5 $(answer SUM1), A said $sum0" same_as_a
check "migrate-peer: it writes and syncs a file on the disk here" "no answer" \
    as_dmig ask_for SUMB 'dd if=/dev/urandom of=/root/on-b bs=4096 count=64 2>/dev/null; sync; echo "SUMB $(md5sum /root/on-b | cut -c 1-32) END"'
sum_b=$(answer SUMB)
dmig_pings() { ping -c 1 -W 1 "$dmig_ip" > /dev/null 2>&1; }
check "migrate-peer: $dmig answers this dom0's ping" "no reply from $dmig_ip" wait_for 30 dmig_pings
follow "$dmig" /tmp/follow.out
must migrate-peer "oxl migrate $dmig back to A" migrate_to "$dmig" 10.0.3.1
linux_left migrate-peer 10.0.3.1 "$dmig"
check "migrate-peer: told A the checksum of the file written here" "nc to 10.0.3.1:8003 failed" tell 10.0.3.1 "$sum_b"
check "migrate-peer: no device model left here" "oxen-dm still runs" wait_for 10 sh -c '! pidof oxen-dm > /dev/null'
echo "migrate-peer: done, $failed failed"
