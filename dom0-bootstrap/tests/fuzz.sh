#!/bin/sh
# fuzz.sh [N [SEED]]: N random hypercalls, half from a domU kernel (the `fuzz`
# guest, tests/guests/fuzz) and half from dom0's user space through /dev/oxen
# (/usr/lib/oxen/fuzz), both at once, beside a bystander domU (minimal-1).
# Run by `cargo xtask fuzz` and the system test `dom0-fuzz-svm`. Then checks
# that both fuzzers saw only answers the ABI allows, that the bystander still
# ticks with its console intact, that oxl still answers, that every domain the
# fuzzers made is gone with the free memory back to the byte, and that the
# hypervisor's log has no FATAL or panic line. Prints "check: NAME: ok|FAILED"
# lines like the other scripts, then the calls and the time they took.
# Without arguments N and SEED come from `fuzz_calls=` and `fuzz_seed=` on dom0's
# kernel command line (the kernel hands them to init as environment variables),
# for Bochs, where nothing can be typed; else 50000 and 1.
. "$(dirname "$0")/lib.sh"
n=${1:-${fuzz_calls:-50000}}
seed=${2:-${fuzz_seed:-1}}
domu_calls=$((n / 2))
dom0_calls=$((n - domu_calls))
state_is() { [ "$(field "$1" 5)" = "$2" ]; }
# The domU fuzzer's own lines (junk it wrote to its console may precede one on the same line).
fuzz_lines() { oxl console --dump fuzz | grep -o 'fuzz: [a-zA-Z].*'; }
fuzz_said() { fuzz_lines | grep -q "$1"; }
domu_done() { fuzz_said '^fuzz: done'; }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "fuzz: $n calls, seed $seed: $domu_calls from the domU fuzzer, $dom0_calls from dom0's /dev/oxen fuzzer"
free0=$(free_kib)
check "create the bystander minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "minimal-1 ticks" "no ticks" wait_for 30 ticked_past minimal-1 0

sed "s/^extra = .*/extra = \"seed=$seed calls=$domu_calls\"/" /etc/oxen/fuzz.cfg > /tmp/fuzz.cfg
t0=$(uptime_s)
check "create the domU fuzzer" "oxl create failed" oxl create /tmp/fuzz.cfg
check "the domU fuzzer starts" "no start line" wait_for 30 fuzz_said '^fuzz: start: '

/usr/lib/oxen/fuzz "$dom0_calls" "$seed" > /tmp/dom0-fuzz.log 2>&1
rc=$?
cat /tmp/dom0-fuzz.log
t1=$(uptime_s)
# The domU fuzzer may still be at it: up to 10 minutes plus 4 ms a call.
check "the domU fuzzer finishes" "no 'fuzz: done' in its console" wait_for $((600 + domu_calls / 250)) domu_done
t2=$(uptime_s)
fuzz_lines | grep -v -E '^fuzz: (progress|tick) '
check "dom0 fuzzer: every answer as the ABI says" "exit status $rc, see above" \
    sh -c "[ $rc = 0 ] && grep -q '^oxen-fuzz: summary: $dom0_calls calls, 0 unexpected' /tmp/dom0-fuzz.log"
check "dom0 fuzzer: its domains are gone" "see its cleanup line" \
    grep -q '^oxen-fuzz: cleanup: 0 of ours left' /tmp/dom0-fuzz.log
check "domU fuzzer: every answer as the ABI says" "see its console above" \
    fuzz_said "^fuzz: summary: $domu_calls calls, 0 unexpected"
check "domU fuzzer: still running" "state $(field fuzz 5)" state_is fuzz running

t=$(last_tick minimal-1)
check "minimal-1 still ticks" "stuck at tick $t" wait_for 20 ticked_past minimal-1 "$t"
junk=$(oxl console --dump minimal-1 | grep -v -c -E "^minimal: (domain [0-9]+ up, |TSC runs at |tick [0-9]+$)")
check "minimal-1's console is intact" "$junk unexpected lines" [ "$junk" = 0 ]
check "oxl list answers" "oxl list failed" sh -c 'oxl list > /dev/null'
check "oxl info answers" "oxl info failed" sh -c 'oxl info > /dev/null'
others=$(oxl list | awk 'NR > 1 && $1 != "Domain-0" && $1 != "minimal-1" && $1 != "fuzz" { print $1 }')
check "no domain left from the fuzzers" "left: $others" [ -z "$others" ]

check "destroy the domU fuzzer" "oxl destroy failed" oxl destroy fuzz
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
both_gone() { gone fuzz && gone minimal-1; }
check "both gone" "still listed" wait_for 30 both_gone
free1=$(free_kib)
check "memory back" "$free0 KiB before, $free1 KiB after" [ "$free1" = "$free0" ]
bad_log=$(oxl dmesg | grep -c -E 'FATAL|[Pp]anic')
check "no crash line in the hypervisor's log" "$bad_log such lines" [ "$bad_log" = 0 ]
echo "fuzz: $n calls ($domu_calls domU, $dom0_calls dom0) in $(echo "$t0 $t2" | awk '{ printf "%.1f", $2 - $1 }') s (dom0's fuzzer done after $(echo "$t0 $t1" | awk '{ printf "%.1f", $2 - $1 }') s)"
echo "fuzz: done, $failed failed"
