#!/bin/sh
# Domain lifecycle checks, run in dom0 by the system test `dom0-domains-svm`
# (tests/system.toml) as /usr/lib/oxen/tests/lifecycle.sh [CYCLES].
#
# Each check prints "check: NAME: ok" or "check: NAME: FAILED (why)"; the test
# expects every ok line and forbids FAILED. Everything is measured here, live,
# through oxl: nothing is assumed. Waits are generous: the guests may run
# under an emulator.
cycles=${1:-200}
. "$(dirname "$0")/lib.sh"

exists() { [ -n "$(field "$1" 2)" ]; }
boots() { oxl console --dump "$1" | grep -c "minimal: domain .* up,"; }
boots_at_least() { [ "$(boots "$1")" -ge "$2" ]; }

free0=$(free_kib)
echo "lifecycle: free memory at start: $free0 KiB"
check "dmesg starts with the hypervisor's first line" "$(oxl dmesg | head -n 1)" \
    sh -c 'oxl dmesg | head -n 1 | grep -q "Oxen hypervisor v.* booting"'

for n in 1 2 3; do
    check "create minimal-$n" "oxl create failed" oxl create "/etc/oxen/minimal-$n.cfg"
done
oxl list
for n in 1 2 3; do
    check "list shows minimal-$n running, 16 MiB, 1 vCPU" "$(oxl list | grep "^minimal-$n ")" \
        [ "$(field minimal-$n 5)/$(field minimal-$n 3)/$(field minimal-$n 4)" = "running/16/1" ]
done
for n in 1 2 3; do
    check "console shows minimal-$n ticking" "no ticks: $(oxl console --dump minimal-$n | tail -n 2)" \
        wait_for 60 ticked_past "minimal-$n" 0
done

# Pause stops progress, unpause resumes it.
oxl pause minimal-2
check "pause: state paused" "state $(field minimal-2 5)" [ "$(field minimal-2 5)" = paused ]
sleep 1
a=$(last_tick minimal-2)
sleep 4
b=$(last_tick minimal-2)
check "pause stops progress" "tick $a, 4 s later tick $b" same_tick "$a" "$b"
oxl unpause minimal-2
check "unpause resumes" "still at tick $b" wait_for 20 ticked_past minimal-2 "$b"

# Reboot: same ID, a fresh boot.
id3=$(field minimal-3 2)
check "reboot -w" "oxl reboot failed" oxl reboot -w minimal-3
check "reboot keeps the ID" "was $id3, now $(field minimal-3 2)" [ "$(field minimal-3 2)" = "$id3" ]
check "reboot boots it again" "$(boots minimal-3) boot banners" wait_for 20 boots_at_least minimal-3 2
check "rebooted guest said so" "no 'rebooting' line" sh -c 'oxl console --dump minimal-3 | grep -q "minimal: rebooting"'
check "rebooted guest ticks" "no tick after the reboot" \
    wait_for 30 sh -c 'oxl console --dump minimal-3 | sed -n "/minimal: rebooting/,\$p" | grep -q "minimal: tick"'

# Shutdown ends it cleanly (the guest powers itself off); destroy at once.
id2=$(field minimal-2 2)
check "shutdown -w" "oxl shutdown failed" oxl shutdown -w minimal-2
check "shutdown: domain gone" "still listed" gone minimal-2
check "shutdown: the guest powered itself off" "no such line in the hypervisor log" \
    sh -c "oxl dmesg | grep -q 'd$id2 (minimal-2): powered off'"
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
check "destroy: domain gone" "still listed" gone minimal-1
check "destroy minimal-3" "oxl destroy failed" oxl destroy minimal-3
free1=$(free_kib)
check "memory back after the lifecycle" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]

# Many create/destroy cycles leave free memory exactly where it was.
i=0
errors=0
while [ "$i" -lt "$cycles" ]; do
    oxl create /etc/oxen/minimal-1.cfg > /dev/null || errors=$((errors + 1))
    oxl destroy minimal-1 || errors=$((errors + 1))
    i=$((i + 1))
done
free2=$(free_kib)
check "$cycles create/destroy cycles without an error" "$errors errors" [ "$errors" = 0 ]
check "$cycles create/destroy cycles: free memory unchanged" "$free0 KiB before, $free2 KiB after" \
    [ "$free2" = "$free0" ]
echo "lifecycle: free memory at the end: $free2 KiB"
oxl list
echo "lifecycle: done, $failed failed"
