#!/bin/sh
# Many domUs at once, run in dom0 by the system test `dom0-many-svm`: more
# domUs than the CPU has TLB tags (QEMU's AMD-V has 16 ASIDs), which the
# per-CPU tag cache makes possible. Creates N minimal domUs of 4 MiB one after
# another, checks every one of them ticks, destroys them all, and checks free
# memory is back to the byte. Usage: many.sh N
. "$(dirname "$0")/lib.sh"
n=${1:-40}

free0=$(free_kib)
i=1
created=0
while [ "$i" -le "$n" ]; do
    sed -e "s/^name = .*/name = \"many-$i\"/" -e 's/^memory = .*/memory = 4/' \
        /etc/oxen/minimal-1.cfg > "/tmp/many-$i.cfg"
    oxl create "/tmp/many-$i.cfg" > /dev/null && created=$((created + 1))
    i=$((i + 1))
done
check "$n domUs created" "only $created" [ "$created" = "$n" ]
echo "many: $(oxl list | grep -c '^many-') domUs listed"

all_ticked() {
    i=1
    while [ "$i" -le "$n" ]; do
        ticked_past "many-$i" 1 || return 1
        i=$((i + 1))
    done
}
check "every one of the $n ticks" "$(for j in $(seq 1 "$n"); do ticked_past many-$j 1 || printf 'many-%s ' "$j"; done)not ticking" \
    wait_for 120 all_ticked

i=1
while [ "$i" -le "$n" ]; do
    oxl destroy "many-$i" > /dev/null || echo "many: destroy many-$i failed"
    i=$((i + 1))
done
check "all destroyed" "$(oxl list | grep -c '^many-') left" [ "$(oxl list | grep -c '^many-')" = 0 ]
free1=$(free_kib)
check "free memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
echo "many: done, $failed failed"
