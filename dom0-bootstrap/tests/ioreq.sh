#!/bin/sh
# I/O requests (ABI 1.6, docs/hypercalls.md "I/O requests"), run in dom0 by
# the system test `dom0-ioreq-svm`. The `ioreq` domU is created paused; its
# device model (/usr/lib/oxen/ioreq-test, dom0-bootstrap/kmod/ioreq-test.c)
# opens an I/O request fd for it, registers its MMIO pages and ports (and
# checks that overlapping ranges and a second server are refused), then the
# domain runs: its MMIO reads and writes of 1/2/4/8 bytes, IN/OUT of 1/2/4,
# and 1000 posted writes are served by the device model, which the guest and
# the device model each check. At the guest's request the device model kills
# itself holding a write: the write completes, every later access reads all
# ones, nothing hangs, and the guest powers off; its memory comes back.
# Before that (unless dom0's command line has ioreq_short: the Bochs test),
# a device model that never answers: the domU's first read waits, the domain
# still pauses, unpauses and is destroyed without it, its memory comes back.
# Prints "check: ioreq: ...: ok|FAILED" and "ioreq: done, N failed".
command -v check > /dev/null || . "$(dirname "$0")/lib.sh"
d=ioreq
free0=$(free_kib)
memory_back() { [ "$(free_kib)" = "$free0" ]; }
serving() { grep -q "ioreq-test: serving" "$1"; }
case " $(cat /proc/cmdline) " in
*" ioreq_short "*) ;;
*)
    check "ioreq: created paused (a device model that never answers)" "oxl create -p failed" oxl create -p /etc/oxen/ioreq.cfg
    /usr/lib/oxen/ioreq-test "$(field $d 2)" hang > /tmp/hang.log 2>&1 &
    hang=$!
    check "ioreq: it registered its ranges" "$(tail -n 3 /tmp/hang.log | tr '\n' ' ')" wait_for 20 serving /tmp/hang.log
    oxl unpause $d
    waits() { grep -q "hanging: vcpu 0 waits on 0x20000001" /tmp/hang.log; }
    check "ioreq: the guest's first read waits for it" "$(cat /tmp/hang.log | tr '\n' ' ')" wait_for 30 waits
    sleep 2
    check "ioreq: and stays unanswered" "the guest went on" sh -c "! oxl console --dump $d | grep -q 'mmio read'"
    check "ioreq: the waiting domain pauses" "oxl pause failed" oxl pause $d
    check "ioreq: it is listed paused" "$(oxl list | tr '\n' ' ')" sh -c "oxl list | grep -q '^$d .*paused'"
    check "ioreq: it unpauses" "oxl unpause failed" oxl unpause $d
    check "ioreq: it is destroyed without its device model" "oxl destroy failed" oxl destroy $d
    check "ioreq: and gone" "$(oxl list | tr '\n' ' ')" wait_for 20 gone $d
    kill $hang
    wait $hang
    check "ioreq: memory back after the destroy" "free $free0 KiB before, $(free_kib) KiB now" wait_for 10 memory_back
    ;;
esac
check "ioreq: created paused" "oxl create -p failed" oxl create -p /etc/oxen/ioreq.cfg
id=$(field $d 2)
/usr/lib/oxen/ioreq-test "$id" > /tmp/dm.log 2>&1 &
dm=$!
check "ioreq: the device model registered its ranges" "$(tail -n 3 /tmp/dm.log | tr '\n' ' ')" wait_for 20 serving /tmp/dm.log
check "ioreq: unpaused" "oxl unpause failed" oxl unpause $d
check "ioreq: the guest ran to its end and powered off" "$(oxl list | tr '\n' ' ')" wait_for 120 gone $d
wait $dm
status=$?
cat /tmp/dm.log
check "ioreq: the device model died of SIGKILL (status 137)" "status $status" [ "$status" -eq 137 ]
check "ioreq: the device model's own checks passed" "see its lines above" grep -q "writes as expected 7, not 0; 0 failed" /tmp/dm.log
check "ioreq: memory back" "free $free0 KiB before, $(free_kib) KiB now" wait_for 10 memory_back
echo "ioreq: done, $failed failed"
