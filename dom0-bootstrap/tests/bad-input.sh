#!/bin/sh
# Bad configs and bad command lines, run in dom0 by the system test
# `dom0-badinput-svm` (tests/system.toml): each must fail with a message that
# says what was wrong (the test checks the messages) and change nothing.
# Prints "check: NAME: ok|FAILED (why)" like lifecycle.sh.
. "$(dirname "$0")/lib.sh"
# refused NAME COMMAND...: COMMAND must exit non-zero; its message is shown.
refused() {
    name=$1; shift
    msg=$("$@" 2>&1); rc=$?
    echo "$msg" | sed 's/^/  | /'
    if [ "$rc" -ne 0 ] && [ -n "$msg" ]; then ok "$name refused"; else bad "$name refused" "exit $rc"; fi
}

oxl create /etc/oxen/minimal-1.cfg > /dev/null
list0=$(oxl list | awk '{ print $1, $2, $3, $4, $5 }')
free0=$(free_kib)
for f in /etc/oxen/bad/*.cfg; do
    refused "config $(basename "$f")" oxl create "$f"
done
refused "a second domain named minimal-1" oxl create /etc/oxen/minimal-1.cfg
refused "pause of a domain that does not exist" oxl pause no-such-domain
refused "destroy of dom0" oxl destroy 0
refused "pause of dom0" oxl pause Domain-0
refused "unpause of a running domain" oxl unpause minimal-1
refused "an unknown command" oxl frobnicate
refused "create without a config" oxl create
refused "an unknown option" oxl list --colour
refused "a config that does not exist" oxl create /etc/oxen/no-such.cfg
list1=$(oxl list | awk '{ print $1, $2, $3, $4, $5 }')
free1=$(free_kib)
if [ "$list1" = "$list0" ]; then ok "domain list unchanged"; else bad "domain list unchanged" "$list1"; fi
if [ "$free1" = "$free0" ]; then ok "free memory unchanged"; else bad "free memory unchanged" "$free0 -> $free1 KiB"; fi
oxl destroy minimal-1
echo "bad-input: done, $failed failed"
