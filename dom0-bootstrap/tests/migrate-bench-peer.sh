#!/bin/sh
# `cargo xtask bench --only migrate`, host B (10.0.3.2; A runs
# migrate-bench.sh): receives mb from A, starts a writer in it that rewrites
# 8 MiB over and over, and migrates it back to A with oxl's default policy
# (10 rounds at most, stop at 64 dirty pages, at most 16 MiB in the
# stop-and-copy).
. /usr/lib/oxen/tests/migrate-lib.sh
. /usr/lib/oxen/tests/migrate-bench-lib.sh
echo "migrate-bench-peer: start (host B, 10.0.3.2)"
free0=$(free_kib)
must migrate-bench-peer "oxl migrate-receive took $lmig" receive
must migrate-bench-peer "$lmig runs here" wait_for 10 running "$lmig"
must migrate-bench-peer "its writer starts" \
    ask_for WRITER '(while [ ! -e /root/stop ]; do dd if=/dev/zero of=/root/fill bs=1048576 count=8 2>/dev/null; done) & echo "WRITER started END"'
sleep 5
must migrate-bench-peer "oxl migrate $lmig back to A (dirtying)" migrate_to --json "$lmig" 10.0.3.1
check "migrate-bench-peer: memory back after it left" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "migrate-bench-peer: done, $failed failed"
