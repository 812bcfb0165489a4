#!/bin/sh
# Two Linux domUs through their whole lifecycle side by side (issue 10), run in
# dom0 by `dom0-linux-vmx`: what linux.sh, linux-many.sh and
# linux-crash.sh show under AMD-V one scenario after another, packed for Intel
# VT-x under Bochs, where a Linux boot takes a minute, into five boots. One
# domain boots at a time: Bochs emulates every CPU in one thread, so two boots
# at once take as long as one after the other, and waits time out sooner.
#   1. linux-a (on_crash = restart), then linux-b (on_crash = preserve), boot
#      beside a minimal test guest; each console holds only its own domain's
#      output; pinned to pCPU 1 with weights 256:512 and two spinners each,
#      they share it 1:2.
#   2. `oxl reboot -w linux-a`, then `reboot` typed in linux-b: each boots
#      again into a fresh tmpfs.
#   3. a panic in each (`echo c > /proc/sysrq-trigger`): linux-a boots again,
#      linux-b is kept, shut down, its crash logged.
# Then `poweroff` typed in linux-a destroys it (on_poweroff = destroy), linux-b
# is destroyed, and free memory is back to the byte.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "linux-lifecycle: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=${1:-900}
out=/tmp/linux-lifecycle.out

# A config named $1 from linux.cfg with on_crash = $2 and "oxen.who=$1" on its
# command line, so the guest can say who it is. What else is added there makes
# a boot under Bochs (≈ 20 M instructions per emulated second) about half as
# long, and nothing of it is what this script looks at:
#   quiet: few console bytes (≈ 4 exits each), and every boot's banner stays in
#     the 16 KiB console ring;
#   cryptomgr.notests: no self-test of every crypto algorithm the kernel
#     registered (its late initcall takes ≈ 60 s there, ≈ 1.2 G instructions);
#   rodata=off: no read-only kernel text, hence no W+X page-table walk of the
#     kernel and user page tables at the end of the boot (≈ 24 s there).
config() {
    sed -e "s/^name = .*/name = \"$1\"/" \
        -e "s/^on_crash = .*/on_crash = \"$2\"/" \
        -e "s/^extra = .*/extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet cryptomgr.notests rodata=off oxen.who=$1\"/" \
        "$(linux_cfg)" > "/tmp/$1.cfg"
}
ask() { printf '%s\n' "$2" | oxl console "$1" > "$out" 2>&1; }
answer() { sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" "$out" | tail -n 1; }
prompt() { oxl console --dump "$1" 2>/dev/null | tail -n 3 | grep -q 'domU:.*# '; }
banners() { oxl console --dump "$1" 2>/dev/null | grep -c "Oxen domU: Linux .* on 2 CPU(s)"; }
# Booted N times (banners in its ring) and at its prompt.
booted() { [ "$(banners "$1")" -ge "$2" ] && prompt "$1"; }
restarts() { oxl list --json "$1" | sed -n 's/.*"restarts": *\([0-9]*\).*/\1/p'; }
# Restarted more than N times by the hypervisor and at its prompt again.
restarted_since() { [ "$(restarts "$1")" -gt "$2" ] 2>/dev/null && booted "$1" "$3"; }
marks() { ask "$1" 'echo "MARKS $(ls /tmp/oxen-mark 2>/dev/null | wc -l) END"'; answer MARKS; }
state_is() { [ "$(field "$1" 5)" = "$2" ]; }
logged() { oxl dmesg | grep -q "$1"; }
at() { echo "linux-lifecycle: $1 at $(cut -d ' ' -f 1 /proc/uptime) s"; }
back() { [ "$(free_kib)" = "$free0" ]; }

free0=$(free_kib)
at "start, $free0 KiB free"
config linux-a restart
config linux-b preserve

# 1. Side by side; consoles; weights.
check "create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "create linux-a" "oxl create failed" oxl create /tmp/linux-a.cfg
check "linux-a boots to its shell on 2 CPUs" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted linux-a 1
at "linux-a booted"
check "create linux-b" "oxl create failed" oxl create /tmp/linux-b.cfg
check "linux-b boots to its shell on 2 CPUs" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted linux-b 1
at "linux-b booted"
check "minimal-1 ticks beside them" "no ticks" wait_for 30 ticked_past minimal-1 0
for d in linux-a linux-b; do
    ask "$d" 'echo "WHO $(sed "s/.*oxen.who=\([^ ]*\).*/\1/" /proc/cmdline) END"'
    check "$d's console answers as $d" "it said '$(answer WHO)'" [ "$(answer WHO)" = "$d" ]
done
only_own() { ! oxl console --dump "$1" | grep -q "$2"; }
check "linux-a's console has nothing of linux-b's" "linux-b's answer in it" only_own linux-a "WHO linux-b END"
check "linux-b's console has nothing of linux-a's" "linux-a's answer in it" only_own linux-b "WHO linux-a END"
check "minimal-1's console has nothing of the Linux domUs'" "Linux lines in it" only_own minimal-1 "Oxen domU"
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1

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
echo "linux-lifecycle: on pCPU 1 for 12 s: linux-a $1 s, linux-b $2 s of CPU, ratio $ratio (weights 256:512)"
check "weights 1:2 between two SMP Linux domUs (within 10%)" "ratio $ratio" \
    awk -v r="$ratio" 'BEGIN { exit !(r >= 1.8 && r <= 2.2) }'
for d in linux-a linux-b; do
    ask "$d" 'kill %1 %2; echo "SPIN off END"'
    oxl vcpu-pin "$d" all all
    oxl sched-credit -d "$d" -w 256
done

# 2. Reboots: by oxl (Ctrl-Alt-Del through its keyboard controller, init's
# clean shutdown, the power-off taken as the reboot asked for) and typed
# inside (on_reboot = restart). A mark in each tmpfs tells the new boot.
ra=$(restarts linux-a); rb=$(restarts linux-b)
ask linux-a 'touch /tmp/oxen-mark'
check "oxl reboot -w linux-a" "oxl reboot failed" oxl reboot -w linux-a
check "linux-a boots again after oxl reboot" "no new boot in $boot_s s" wait_for "$boot_s" restarted_since linux-a "$ra" 2
at "linux-a rebooted"
ask linux-b 'touch /tmp/oxen-mark; reboot'
check "linux-b boots again after reboot typed inside" "no new boot in $boot_s s" wait_for "$boot_s" restarted_since linux-b "$rb" 2
at "linux-b rebooted"
for d in linux-a linux-b; do
    m=$(marks "$d")
    check "$d's new boot has a fresh tmpfs" "marks: '$m'" [ "$m" = 0 ]
done

# 3. Panics: pvpanic tells the hypervisor; on_crash says what follows.
ra=$(restarts linux-a)
ask linux-a 'echo c > /proc/sysrq-trigger'
check "the hypervisor logged linux-a's crash and restart" "no such line in the log" \
    wait_for 60 logged "(linux-a): reported a crash: restarting it"
check "linux-a boots again after its panic (on_crash = restart)" "no new boot in $boot_s s" \
    wait_for "$boot_s" restarted_since linux-a "$ra" 3
at "linux-a booted after its panic"
ask linux-b 'echo c > /proc/sysrq-trigger'
check "linux-b's panic leaves it shut down (on_crash = preserve)" "state $(field linux-b 5)" \
    wait_for 60 state_is linux-b shutdown
check "linux-b's kernel panicked" "no panic on its console" \
    sh -c "oxl console --dump linux-b | grep -q 'Kernel panic - not syncing: sysrq triggered crash'"
check "the hypervisor logged linux-b's crash" "no such line in the log" \
    wait_for 30 logged "(linux-b): reported a crash: keeping it (preserve)"

# The end: poweroff typed inside (on_poweroff = destroy); destroy the kept one.
ask linux-a 'poweroff'
check "poweroff typed inside destroys linux-a" "still listed after 120 s" wait_for 120 gone linux-a
check "destroy linux-b" "oxl destroy failed" oxl destroy linux-b
check "linux-b is gone" "still listed" wait_for 30 gone linux-b
check "memory back" "free $(free_kib) KiB, was $free0 KiB" wait_for 60 back
at "done"
echo "linux-lifecycle: done, $failed failed"
