#!/bin/sh
# Out of memory, run in dom0 by the system test `dom0-oom-svm`
# (tests/system.toml): domUs of 32 MiB (dom0-bootstrap/domains/oom.cfg under
# other names) are created until a create fails; it must fail with -ENOMEM
# (oxl's message for it), the host must still answer and the domUs still run,
# and once all are destroyed the free memory must be back to the byte.
# Prints "check: NAME: ok|FAILED (why)" like the other scripts.
. "$(dirname "$0")/lib.sh"
# More than the machine can hold (512 MiB, dom0 256 MiB): the loop must end
# on a failed create well before this.
max=64

free0=$(free_kib)
echo "oom: $free0 KiB free at start"
i=0
while [ "$i" -lt "$max" ]; do
    i=$((i + 1))
    sed "s/^name = .*/name = \"oom-$i\"/" /etc/oxen/oom.cfg > "/tmp/oom-$i.cfg"
    if ! oxl create "/tmp/oom-$i.cfg" 2> /tmp/oom.err; then
        break
    fi
done
made=$((i - 1))
echo "oom: $made domUs created; create $i said: $(cat /tmp/oom.err)"
check "creates until one fails" "all $max creates succeeded" [ "$made" -lt "$max" ]
check "the failed create was -ENOMEM" "$(cat /tmp/oom.err)" \
    grep -q "needs 32 MiB but the hypervisor has .* free" /tmp/oom.err
check "the hypervisor logged why" "no such line in dmesg" \
    sh -c "oxl dmesg | grep -q 'create oom-$i: 32 MiB wanted, the pool had only'"
check "the failed domain is not in the list" "$(oxl list | grep "^oom-$i ")" gone "oom-$i"
check "at least one domU fitted" "none did" [ "$made" -ge 1 ]
check "the host still answers" "oxl info failed" sh -c 'oxl info > /dev/null'
check "the last domU created runs" "no ticks" wait_for 60 ticked_past "oom-$made" 0
# Memory freed by a destroy is usable again: one more fits after one goes.
check "destroy oom-1" "oxl destroy failed" oxl destroy oom-1
check "a create fits again after a destroy" "$(cat /tmp/oom.err)" oxl create "/tmp/oom-$i.cfg"
check "destroy oom-$i" "oxl destroy failed" oxl destroy "oom-$i"
n=2
while [ "$n" -le "$made" ]; do
    oxl destroy "oom-$n" || bad "destroy oom-$n" "oxl destroy failed"
    n=$((n + 1))
done
left=$(oxl list | grep -c "^oom-")
check "all destroyed" "$left left" [ "$left" = 0 ]
free1=$(free_kib)
check "free memory back to the byte" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
echo "oom: done, $failed failed"
