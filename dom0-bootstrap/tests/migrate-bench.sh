#!/bin/sh
# `cargo xtask bench --only migrate` (issue 12's figures), host A (10.0.3.1,
# the bench machine; B, 10.0.3.2, its peer, runs migrate-bench-peer.sh). A
# 256 MiB Linux domU (2 vCPUs, its root in its RAM), mb: saved and restored
# here, timed beside dom0 writing as many bytes to the same tmpfs; then
# migrated to B while idle; B starts a writer in it (8 MiB rewritten over and
# over) and migrates it back. Each sender prints its rounds and a JSON
# summary (oxl migrate --json); this script prints a `migrate-bench: RESULT`
# line per timed step, in dom0's /proc/uptime (10 ms steps).
. /usr/lib/oxen/tests/migrate-lib.sh
. /usr/lib/oxen/tests/migrate-bench-lib.sh
echo "migrate-bench: start (host A, 10.0.3.1)"
free0=$(free_kib)
must migrate-bench "create $lmig (256 MiB, 2 vCPUs)" oxl create /tmp/$lmig.cfg
booted_or_gone() { linux_booted "$lmig" || gone "$lmig"; }
wait_for 600 booted_or_gone
must migrate-bench "$lmig boots to its shell" linux_booted "$lmig"
# Its boot's last writes settle.
sleep 10

# Save and restore, beside dom0 writing as many bytes to the same tmpfs.
t0=$(up); dd if=/dev/zero of=/tmp/copy bs=1048576 count=256 2>/dev/null; t1=$(up)
rm -f /tmp/copy
echo "migrate-bench: RESULT dom0-write $(since "$t0" "$t1") 268435456"
t0=$(up)
must migrate-bench "oxl save $lmig" oxl save "$lmig" /tmp/$lmig.save
t1=$(up)
echo "migrate-bench: RESULT save $(since "$t0" "$t1") $(stat -c %s /tmp/$lmig.save)"
t0=$(up)
must migrate-bench "oxl restore" oxl restore /tmp/$lmig.save
t1=$(up)
echo "migrate-bench: RESULT restore $(since "$t0" "$t1") $(stat -c %s /tmp/$lmig.save)"
rm -f /tmp/$lmig.save
must migrate-bench "$lmig answers after its restore" ask_for UP 'echo "UP yes END"'
sleep 5

# Idle, to B.
must migrate-bench "oxl migrate $lmig to B (idle)" migrate_to --json "$lmig" 10.0.3.2
check "migrate-bench: $lmig is gone here" "still listed" gone "$lmig"
check "migrate-bench: memory back after it left" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled

# Back from B, written to while it moves.
must migrate-bench "oxl migrate-receive took $lmig back" receive
must migrate-bench "$lmig answers here" ask_for BACK 'touch /root/stop; echo "BACK yes END"'
check "migrate-bench: destroy $lmig" "oxl destroy failed" oxl destroy "$lmig"
check "migrate-bench: memory back at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "migrate-bench: done, $failed failed"
