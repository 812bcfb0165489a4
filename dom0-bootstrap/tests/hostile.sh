#!/bin/sh
# Isolation checks, run in dom0 by the system test `dom0-hostile-svm`
# (tests/system.toml): the hostile guest probes what a domU must not do, then
# misbehaves three ways (out-of-bounds read, wild write, triple fault); each
# time it must get errors or die alone while a minimal domU and dom0 run on.
# Prints "check: NAME: ok|FAILED (why)" like lifecycle.sh. Arguments are expanded
# once, so what wait_for polls is always a function, never a "$(...)".
. "$(dirname "$0")/lib.sh"
state_is() { [ "$(field "$1" 5)" = "$2" ]; }

free0=$(free_kib)
check "create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "minimal-1 ticks" "no ticks" wait_for 30 ticked_past minimal-1 0

check "create hostile" "oxl create failed" oxl create /etc/oxen/hostile.cfg
check "hostile ends in a crash, kept (on_crash = preserve)" "state $(field hostile 5)" \
    wait_for 120 state_is hostile shutdown
oxl console --dump hostile
check "every hostile probe was refused" "see its console above" \
    sh -c 'oxl console --dump hostile | grep -q "hostile: summary: [0-9]* probes, 0 unexpected"'
check "hostile died of its out-of-bounds read" "no such line in the log" \
    sh -c 'oxl dmesg | grep -q "(hostile): crashed (memory outside its own)"'
check "destroy the kept hostile" "oxl destroy failed" oxl destroy hostile

for v in wild-write triple-fault; do
    check "create hostile-$v" "oxl create failed" oxl create "/etc/oxen/hostile-$v.cfg"
    check "hostile-$v dies alone (on_crash = destroy)" "still $(field hostile-$v 5)" wait_for 120 gone "hostile-$v"
done
check "hostile-wild-write died of its write" "no such line in the log" \
    sh -c 'oxl dmesg | grep -q "(hostile-wild-write): crashed (memory outside its own)"'
check "hostile-triple-fault died of a triple fault" "no such line in the log" \
    sh -c 'oxl dmesg | grep -q "(hostile-triple-fault): crashed (triple fault)"'

t=$(last_tick minimal-1)
check "minimal-1 still ticks" "stuck at tick $t" wait_for 20 ticked_past minimal-1 "$t"
junk=$(oxl console --dump minimal-1 | grep -v -c -E "^minimal: (domain [0-9]+ up, |TSC runs at |tick [0-9]+$)")
check "minimal-1's console is intact" "$junk unexpected lines" [ "$junk" = 0 ]
check "dom0 answers" "" [ "$(echo $((6 * 7)))" = 42 ]
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
free1=$(free_kib)
check "memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
echo "hostile: done, $failed failed"
