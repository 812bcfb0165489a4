#!/bin/sh
# Both hostile suites of issue 9 in one dom0 boot, for the Bochs test
# `dom0-probes-vmx` (Bochs cannot type into the console, so dom0's init runs
# this: dom0_run=): hostile dom0 user space (hostile-user.sh), then the hostile
# domU's instruction probes and endless loops (hostile2.sh).
dir=$(dirname "$0")
uptime_s() { cut -d ' ' -f 1 /proc/uptime; }
echo "hostile-vmx: dom0 up $(uptime_s) s"
"$dir/hostile-user.sh" "${1:-200}"
echo "hostile-vmx: dom0 up $(uptime_s) s"
"$dir/hostile2.sh"
echo "hostile-vmx: done, dom0 up $(uptime_s) s"
