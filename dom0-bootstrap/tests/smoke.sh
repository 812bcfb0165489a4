#!/bin/sh
# A short domain smoke test, run in dom0 by the system test `dom0-domains-vmx`
# (tests/system.toml) under Bochs, where everything is slow: dom0's init starts
# it from the kernel command line (`dom0_run=`, dom0-bootstrap/init), since
# Bochs tests cannot type into the console. One minimal domU: create, see it
# tick, its console output waking an event waiter (dom0's event line),
# pause/unpause, destroy, free memory back to where it started.
#
# Prints "check: NAME: ok|FAILED (why)" like lifecycle.sh, then
# "smoke: done, N failed". Waits are in dom0's seconds, which under Bochs are
# emulated ones; the guest ticks every 500 ms (minimal-1.cfg).
. "$(dirname "$0")/lib.sh"

up() { oxl console --dump "$1" | grep -q "minimal: domain [0-9]* up,"; }

oxl info
free0=$(free_kib)
echo "smoke: free memory at start: $free0 KiB"

check "create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "minimal-1 says it is up" "no banner: $(oxl console --dump minimal-1 | tail -n 2)" \
    wait_for 30 up minimal-1
check "console shows minimal-1 ticking" "no ticks: $(oxl console --dump minimal-1 | tail -n 2)" \
    wait_for 30 ticked_past minimal-1 1
oxl list
# dom0's event line: the guest's console output wakes a waiter in
# /dev/oxen's EVENT_WAIT (ioctl-test prints "N passed, 0 failed").
check "minimal-1's console output wakes an event waiter" "$(/usr/lib/oxen/ioctl-test events | tail -n 1)" \
    sh -c '/usr/lib/oxen/ioctl-test events | grep -q " 0 failed"'
grep oxen-events /proc/interrupts

oxl pause minimal-1
check "pause: state paused" "state $(field minimal-1 5)" [ "$(field minimal-1 5)" = paused ]
a=$(last_tick minimal-1)
sleep 2
b=$(last_tick minimal-1)
check "pause stops ticks" "tick $a, 2 s later tick $b" same_tick "$a" "$b"
oxl unpause minimal-1
check "unpause resumes ticks" "still at tick $b" wait_for 20 ticked_past minimal-1 "$b"

oxl console --dump minimal-1 | head -n 3
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
check "destroy: domain gone" "still listed" gone minimal-1
free1=$(free_kib)
check "free memory back to the start" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
echo "smoke: done, $failed failed"
