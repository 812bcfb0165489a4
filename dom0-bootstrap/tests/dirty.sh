#!/bin/sh
# Dirty-page logging (ABI 1.8, domctl LOG_DIRTY; docs/migration.md "Dirty-page
# logging"), run in dom0 by the system tests `dom0-dirty-svm` and (under
# VT-x) `dom0-devmodel-vmx`: beside a running echo domU,
# /usr/lib/oxen/dirty-test (dom0-bootstrap/kmod/dirty-test.c) turns logging
# on, has the guest write a known set of pages (a "dirty N ..." line on its
# console), and checks CLEAN reports them (and says which others and why), a
# second CLEAN right after reports few, PEEK does not clear, a page written
# again after CLEAN is reported again, the refusals, DISABLE, and ENABLE
# again. Here: the domain is destroyed with logging on, dom0 runs on, and
# free memory is back to the byte (the log and the 4 KiB tables the split
# of its 2 MiB pages made are freed with it).
command -v check > /dev/null || . "$(dirname "$0")/lib.sh"
d=echo
free0=$(free_kib)
echo "dirty: $free0 KiB free before"
# 64 MiB: the size BENCHMARKS.md's figures are for (16384 pages, 32 2 MiB
# pages split by ENABLE).
sed 's/^memory = .*/memory = 64/' /etc/oxen/echo.cfg > /tmp/echo-64.cfg
check "dirty: create" "oxl create failed" oxl create /tmp/echo-64.cfg
prompt() { oxl console --dump $d | grep -q 'echo> '; }
check "dirty: the guest is up" "no prompt" wait_for 60 prompt
id=$(field $d 2)
mib=$(field $d 3)
echo "dirty: $d is d$id with $mib MiB"
exits0=$(oxl list --json $d | sed -n 's/.*"exits": *\([0-9]*\).*/\1/p')
/usr/lib/oxen/dirty-test "$id" "$mib"
rc=$?
exits1=$(oxl list --json $d | sed -n 's/.*"exits": *\([0-9]*\).*/\1/p')
echo "dirty: the domain took $((exits1 - exits0)) exits during the test program"
check "dirty: the test program passed" "$rc failure(s), or it died (status $rc)" [ "$rc" = 0 ]
check "dirty: destroy with logging on" "oxl destroy failed" oxl destroy $d
check "dirty: the domain is gone" "$d still listed" wait_for 10 gone $d
check "dirty: oxl list answers" "oxl list failed" oxl list
free_back() { [ "$(free_kib)" = "$free0" ]; }
check "dirty: memory back to the byte" "$free0 KiB before, $(free_kib) KiB after" wait_for 10 free_back
echo "dirty: done, $failed failed"
