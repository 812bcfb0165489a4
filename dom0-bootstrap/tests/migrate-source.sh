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

check "migrate: create mig" "oxl create failed" oxl create /tmp/mig.cfg
check "migrate: it ticks" "no ticks" wait_for 30 ticked_past mig 2

# Refused, the domain running on: no receiver on that port, dom0, a bad host.
oxl migrate mig 10.0.3.2:9 > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: a host with no receiver is refused" "status $s" [ "$s" -ne 0 ]
check "migrate: it says why" "see above" grep -q "cannot connect to 10.0.3.2 port 9" /tmp/r.out
oxl migrate Domain-0 10.0.3.2 > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: dom0 is refused" "status $s" grep -q "it is dom0" /tmp/r.out
oxl migrate mig 10.0.3.2:x > /tmp/r.out 2>&1; s=$?; cat /tmp/r.out
check "migrate: a bad HOST:PORT is refused" "status $s" grep -q "is not HOST or HOST:PORT" /tmp/r.out
t=$(last_tick mig)
check "migrate: mig runs on after the refusals" "no tick past $t" wait_for 10 ticked_past mig "$t"

# A to B.
follow mig /tmp/follow.out
must migrate "oxl migrate mig to B" migrate_to mig 10.0.3.2
left migrate mig 10.0.3.2

# B to A: received here.
must migrate "oxl migrate-receive took mig back" receive
arrived migrate mig 10.0.3.2

check "migrate: destroy it" "oxl destroy failed" oxl destroy mig
check "migrate: memory back after the minimal domU" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled

# A Linux domU counting on its console. While a writer in it dirties 16 MiB
# over and over, a migration allowed 2 rounds and 1 MiB for the stop-and-copy
# does not converge: it is not paused and runs on here. With the writer
# stopped it moves to B, which checks the counter across the move.
check "migrate: create $lmig" "oxl create failed" oxl create /tmp/$lmig.cfg
# (Waiting ends early if it crashed: under QEMU's TCG a boot beside another
# machine has met the emulator's impossible triple fault, which the harness
# retries.)
booted_or_gone() { linux_booted "$lmig" || gone "$lmig"; }
wait_for 600 booted_or_gone
check "migrate: $lmig boots to its shell" "no banner and prompt in 600 s, or it crashed" linux_booted "$lmig"
ask '(i=0; while :; do i=$((i + 1)); echo "COUNT $i"; usleep 100000; done) & echo "COUNTER started END"'
check "migrate: its counter runs" "no COUNT past 20 in 60 s" wait_for 60 counted_past 20
ask '(while [ ! -e /root/stop ]; do dd if=/dev/zero of=/root/fill bs=1048576 count=16 2>/dev/null; done) & echo "WRITER started END"'
sleep 3
migrate_to --max-rounds 2 --max-final-mib 1 "$lmig" 10.0.3.2; s=$?
check "migrate: a domU writing faster than the rounds move it is not moved" "status $s" [ "$s" -ne 0 ]
check "migrate: oxl says it does not converge" "see above" grep -q "does not converge" /tmp/migrate.out
c=$(last_count)
check "migrate: it runs on here, counting" "no COUNT past $c" wait_for 20 counted_past "$c"
check "migrate: its writer stops" "no answer" ask_for STOPPED 'touch /root/stop; sleep 2; echo "STOPPED yes END"'
# Its clock against this dom0's, which B compares with its own after the move.
check "migrate: its clock reads" "no answer" ask_for CLK 'echo "CLK $(date +%s) END"'
skew=$(( $(answer CLK) - $(date +%s) ))
echo "migrate: $lmig's clock is this dom0's $skew s"
follow "$lmig" /tmp/follow.out
must migrate "oxl migrate $lmig to B" migrate_to "$lmig" 10.0.3.2
check "migrate: told B its clock's skew" "nc to 10.0.3.2:8003 failed" tell 10.0.3.2 "$skew"
linux_left migrate 10.0.3.2

# B sends it back: counting on, its clock where it was against this dom0's.
must migrate "oxl migrate-receive took $lmig back" receive
linux_arrived migrate 10.0.3.2
back=$(( $(answer DATE) - $(date +%s) ))
echo "migrate: $lmig's clock is this dom0's $back s, was $skew s before it left"
near() { [ $((back - skew)) -le 2 ] && [ $((skew - back)) -le 2 ]; }
check "migrate: its clock keeps its time across both moves (within 2 s)" "$back s now, $skew s before" near
check "migrate: destroy $lmig" "oxl destroy failed" oxl destroy "$lmig"
check "migrate: memory back after $lmig" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled

# dmig: its root on the disk both hosts see, a vif on the bridge the wire is a
# port of. It moves to B while this dom0 pings it once a second: its counter,
# its disk and its address go on there (its device model's writes go with the
# rounds, its devices' state with the stream, B's device model announces its
# MAC); B writes a file on the disk and sends it back.
check "migrate: the shared disk holds the root image" "writing /dev/vda failed" \
    sh -c 'gunzip -c /usr/lib/oxen/linux/rootfs.ext4.gz > /dev/vda && sync'
check "migrate: create $dmig (root on the shared disk, a vif on xenbr0)" "oxl create failed" oxl create /tmp/$dmig.cfg
wait_for 600 as_dmig booted_or_gone
check "migrate: $dmig boots to its shell" "no banner and prompt in 600 s, or it crashed" linux_booted "$dmig"
dmig_pings() { ping -c 1 -W 1 "$dmig_ip" > /dev/null 2>&1; }
check "migrate: $dmig answers this dom0's ping" "no reply from $dmig_ip in 60 s" wait_for 60 dmig_pings
check "migrate: a file written and synced on its disk" "no answer" \
    as_dmig ask_for SUM0 'dd if=/dev/urandom of=/root/data bs=4096 count=64 2>/dev/null; sync; echo "SUM0 $(md5sum /root/data | cut -c 1-32) END"'
sum0=$(answer SUM0)
as_dmig ask '(i=0; while :; do i=$((i + 1)); echo "COUNT $i"; usleep 100000; done) & echo "COUNTER started END"'
check "migrate: its counter runs" "no COUNT past 20 in 60 s" as_dmig wait_for 60 counted_past 20
pinging
sleep 3
follow "$dmig" /tmp/follow.out
must migrate "oxl migrate $dmig to B" migrate_to "$dmig" 10.0.3.2
check "migrate: told B its file's checksum" "nc to 10.0.3.2:8003 failed" tell 10.0.3.2 "$sum0"
linux_left migrate 10.0.3.2 "$dmig"
check "migrate: its device model ended here" "oxen-dm still runs" wait_for 10 sh -c '! pidof oxen-dm > /dev/null'
sleep 5
set -- $(ping_loss)
sent=${1:-0} answered=${2:-0}
echo "migrate: ping $dmig_ip from A: $sent sent, $answered answered across the move"
few_lost() { [ "$sent" -ge 5 ] && [ $((sent - answered)) -le 3 ]; }
check "migrate: it answered this dom0's pings across the move (at most 3 lost)" "$sent sent, $answered answered" few_lost

# Back from B: the file B wrote is on the disk here (read past this dom0's
# cache of the disk, which predates B's writes: oxen-dm's O_DIRECT).
must migrate "oxl migrate-receive took $dmig back" receive
linux_arrived migrate 10.0.3.2 "$dmig"
sum_b=$(hear)
check "migrate: its file from before the moves reads back" "no answer" \
    as_dmig ask_for SUM1 'echo 3 > /proc/sys/vm/drop_caches; echo "SUM1 $(md5sum /root/data | cut -c 1-32) END"'
check "migrate: it is the same file" "md5 $(answer SUM1), was $sum0" [ "$(answer SUM1)" = "$sum0" ]
check "migrate: the file it wrote on B reads back here" "no answer" \
    as_dmig ask_for SUMB1 'echo "SUMB1 $(md5sum /root/on-b | cut -c 1-32) END"'
same_as_b() { [ -n "$sum_b" ] && [ "$(answer SUMB1)" = "$sum_b" ]; }
check "migrate: with B's checksum" "md5 $(answer SUMB1), B said $sum_b" same_as_b
check "migrate: $dmig answers this dom0's ping after coming back" "no reply" wait_for 30 dmig_pings
check "migrate: destroy $dmig" "oxl destroy failed" oxl destroy "$dmig"
check "migrate: no device model left" "oxen-dm still runs" wait_for 10 sh -c '! pidof oxen-dm > /dev/null'
check "migrate: memory back at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "migrate: done, $failed failed"
