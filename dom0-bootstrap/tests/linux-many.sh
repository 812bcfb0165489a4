#!/bin/sh
# Linux domUs side by side (issue 10), run in dom0 by `dom0-linux-many-svm`:
# two Linux domUs and a minimal test guest at once, each console holding only
# its own domain's output; the two Linux domUs, 2 vCPUs each, pinned to pCPU 1
# with weights 256 and 512 and two spinners each, share it 1:2; then 20
# create -> boot -> destroy cycles of one, free memory back to the byte.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "linux-many: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=600
cycles=${1:-20}
out=/tmp/linux-many.out

# A config named $1 from linux.cfg, quiet (only init's lines on the console),
# with "oxen.who=$1" on its command line so the guest can say who it is.
config() {
    sed -e "s/^name = .*/name = \"$1\"/" \
        -e "s/^extra = .*/extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet oxen.who=$1\"/" \
        "$(linux_cfg)" > "/tmp/$1.cfg"
}
ask() { printf '%s\n' "$2" | oxl console "$1" > "$out" 2>&1; }
answer() { sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" "$out" | tail -n 1; }
booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on 2 CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }

free0=$(free_kib)
echo "linux-many: $free0 KiB free, $cycles cycles"
config linux-a
config linux-b
check "create linux-a" "oxl create failed" oxl create /tmp/linux-a.cfg
check "create linux-b" "oxl create failed" oxl create /tmp/linux-b.cfg
check "create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "linux-a boots" "no shell in $boot_s s" wait_for "$boot_s" booted linux-a
check "linux-b boots" "no shell in $boot_s s" wait_for "$boot_s" booted linux-b
check "minimal-1 ticks beside them" "no ticks" wait_for 30 ticked_past minimal-1 0

ask linux-a 'echo "WHO $(sed "s/.*oxen.who=\([^ ]*\).*/\1/" /proc/cmdline) END"'
check "linux-a's console answers as linux-a" "it said '$(answer WHO)'" [ "$(answer WHO)" = linux-a ]
ask linux-b 'echo "WHO $(sed "s/.*oxen.who=\([^ ]*\).*/\1/" /proc/cmdline) END"'
check "linux-b's console answers as linux-b" "it said '$(answer WHO)'" [ "$(answer WHO)" = linux-b ]
only_own() { ! oxl console --dump "$1" | grep -q "$2"; }
check "linux-a's console has nothing of linux-b's" "linux-b's answer in it" only_own linux-a "WHO linux-b END"
check "linux-b's console has nothing of linux-a's" "linux-a's answer in it" only_own linux-b "WHO linux-a END"
check "minimal-1's console has nothing of the Linux domUs'" "Linux lines in it" only_own minimal-1 "Oxen domU"
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1

# Weights 1:2 on one pCPU, both vCPUs of each busy.
for d in linux-a linux-b; do
    oxl vcpu-pin "$d" all 1
    ask "$d" '(while :; do :; done) & (while :; do :; done) & echo "SPIN on END"'
done
oxl sched-credit -d linux-a -w 256
oxl sched-credit -d linux-b -w 512
sleep 2
set -- $(share_ratio linux-a linux-b 12)
ratio=$3
oxl vcpu-list
echo "linux-many: on pCPU 1 for 12 s: linux-a $1 s, linux-b $2 s of CPU, ratio $ratio (weights 256:512)"
check "weights 1:2 between two SMP Linux domUs (within 10%)" "ratio $ratio" \
    awk -v r="$ratio" 'BEGIN { exit !(r >= 1.8 && r <= 2.2) }'
check "destroy linux-a" "oxl destroy failed" oxl destroy linux-a
check "destroy linux-b" "oxl destroy failed" oxl destroy linux-b

back() { [ "$(free_kib)" = "$free0" ]; }
check "memory back after the side-by-side run" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back

# Cycles: create, boot to its shell, destroy.
i=0; bad_cycles=0
while [ "$i" -lt "$cycles" ]; do
    i=$((i + 1))
    if ! oxl create /tmp/linux-a.cfg > /dev/null; then bad_cycles=$((bad_cycles + 1)); continue; fi
    wait_for "$boot_s" booted linux-a || { bad_cycles=$((bad_cycles + 1)); echo "linux-many: cycle $i: no shell"; }
    oxl destroy linux-a
    wait_for 30 gone linux-a
    # Its memory is freed just after it leaves the list.
    wait_for 30 back
    echo "linux-many: cycle $i done, $(free_kib) KiB free"
done
check "$cycles create-boot-destroy cycles" "$bad_cycles failed" [ "$bad_cycles" = 0 ]
check "memory back to the byte after the cycles" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back
echo "linux-many: done, $failed failed"
