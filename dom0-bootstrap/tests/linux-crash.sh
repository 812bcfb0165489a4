#!/bin/sh
# A Linux domU's kernel panic applies its on_crash (issue 10), run in dom0 by
# the system test `dom0-linux-crash-svm`: the domU of /etc/oxen/linux.cfg,
# renamed, with on_crash = "preserve" and then "restart", loads pvpanic (rcS
# says so), panics on `echo c > /proc/sysrq-trigger` typed through `oxl
# console` (piped), and its pvpanic write ends it as configured: preserve →
# state shutdown with "reported a crash" in the log; restart → it boots again.
# Memory is back at the end. Prints "check: NAME: ok|FAILED (why)" (lib.sh)
# and "linux-crash: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=${1:-600}
out=/tmp/linux-crash.out
state_is() { [ "$(field "$1" 5)" = "$2" ]; }

# As in linux.sh, for the domain named $dom.
ask() { printf '%s\n' "$1" | oxl console "$dom" > "$out" 2>&1; }
banners() { oxl console --dump "$dom" 2>/dev/null | grep -c "Oxen domU: Linux .* on 2 CPU(s)"; }
booted() { [ "$(banners)" -ge "${1:-1}" ] && oxl console --dump "$dom" | tail -n 3 | grep -q 'domU:.*# '; }
logged() { oxl dmesg | grep -q "$1"; }
# A banner after the last panic on its console, and the prompt: booted again.
# (The ring keeps 16 KiB, less than a boot's log: the first banner, and maybe
# the panic, are gone by then; nothing but a new boot writes after a panic.)
booted_again() {
    oxl console --dump "$dom" | awk '/Kernel panic - not syncing/ { b = 0 } /Oxen domU: Linux .* on 2 CPU\(s\)/ { b = 1 } END { exit !b }' &&
        oxl console --dump "$dom" | tail -n 3 | grep -q 'domU:.*# '
}
at() { echo "linux-crash: $1 at $(cut -d ' ' -f 1 /proc/uptime) s"; }

free0=$(free_kib)
echo "linux-crash: dom0 up $(cut -d ' ' -f 1 /proc/uptime) s, $free0 KiB free"

# on_crash = "preserve": the panic leaves it shut down, kept.
dom=linux-preserve
sed -e "s/^name = .*/name = \"$dom\"/" -e 's/^on_crash = .*/on_crash = "preserve"/' \
    "$(linux_cfg)" > /tmp/$dom.cfg
check "create $dom" "oxl create failed" oxl create /tmp/$dom.cfg
check "$dom boots to its shell" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted 1
at "booted"
oxl console --dump $dom | grep "pvpanic"
check "$dom loaded pvpanic" "rcS says: $(oxl console --dump $dom | grep pvpanic)" \
    sh -c "oxl console --dump $dom | grep -q 'Oxen domU: pvpanic loaded'"
ask 'echo c > /proc/sysrq-trigger'
check "$dom's panic leaves it shut down (on_crash = preserve)" "state $(field $dom 5)" \
    wait_for 60 state_is $dom shutdown
oxl console --dump $dom | grep -E "sysrq: Trigger a crash|Kernel panic" | head -n 2
check "its kernel panicked" "no panic on its console" \
    sh -c "oxl console --dump $dom | grep -q 'Kernel panic - not syncing: sysrq triggered crash'"
check "the hypervisor logged the crash" "no such line in the log" \
    logged "($dom): reported a crash: keeping it (preserve)"
check "destroy $dom" "oxl destroy failed" oxl destroy $dom
check "$dom is gone" "still listed" wait_for 30 gone $dom
# A destroyed domain's memory is scrubbed and freed shortly after it leaves
# the list; the next one needs it.
back() { [ "$(free_kib)" = "$free0" ]; }
check "its memory is back" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back

# on_crash = "restart": the panic reboots it.
dom=linux-restart
sed -e "s/^name = .*/name = \"$dom\"/" -e 's/^on_crash = .*/on_crash = "restart"/' \
    "$(linux_cfg)" > /tmp/$dom.cfg
check "create $dom" "oxl create failed" oxl create /tmp/$dom.cfg
check "$dom boots to its shell" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted 1
at "booted"
ask 'echo c > /proc/sysrq-trigger'
at "panicked"
check "the hypervisor logged the crash and the restart" "no such line in the log" \
    wait_for 60 logged "($dom): reported a crash: restarting it"
check "$dom's panic restarts it (on_crash = restart)" "no banner and prompt after the panic in $boot_s s" \
    wait_for "$boot_s" booted_again
at "booted again"
oxl list
check "destroy $dom" "oxl destroy failed" oxl destroy $dom
check "$dom is gone" "still listed" wait_for 30 gone $dom

check "memory back" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back
at "done"
echo "linux-crash: done, $failed failed"
