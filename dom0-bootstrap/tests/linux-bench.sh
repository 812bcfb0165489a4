#!/bin/sh
# A Linux domU's boot timed in dom0 for `cargo xtask bench --only linux`
# (xtask/src/bench.rs), which boots dom0 with
# `dom0_run=/usr/lib/oxen/tests/linux-bench.sh linux_vcpus=N` and parses the
# lines starting with "linux-bench: ". By hand: run it in dom0's shell with no
# domU called linux.
#
# A copy of /etc/oxen/linux.cfg in /tmp, with `oxen.tsc` added to its kernel
# command line (rcS then prints the TSC and its monotonic clock at the banner)
# and N vCPUs, is created; the TSC is read in dom0 just before `oxl create`
# with the domU's own reader (/usr/lib/oxen/tsc, taken out of its initramfs:
# freestanding, so it runs in dom0 too). Oxen does not offset a guest's TSC,
# so the domU's TSC at its banner less dom0's before `oxl create` is the time
# between them: under QEMU's -icount shift=0 the instructions the whole
# machine executed (both CPUs, plus virtual time while all idle), under TCG
# host cycles, turned into time with the TSC's rate against dom0's clock
# measured over the same stretch. Then `oxl destroy`: the hypervisor logs
# each vCPU's exits by reason.
vcpus=2
for a in $(cat /proc/cmdline); do
    case $a in linux_vcpus=*) vcpus=${a#linux_vcpus=} ;; esac
done
cfg=/tmp/linux-bench.cfg
sed -e 's/^extra = "\(.*\)"$/extra = "\1 oxen.tsc"/' -e "s/^vcpus = .*/vcpus = $vcpus/" \
    /etc/oxen/linux.cfg > "$cfg"
(cd /tmp && cpio -i -d usr/lib/oxen/tsc < /usr/lib/oxen/linux/initrd.cpio 2>/dev/null)
tsc=/tmp/usr/lib/oxen/tsc
echo "linux-bench: start vcpus=$vcpus extra=$(sed -n 's/^extra = //p' "$cfg")"
if ! [ -x "$tsc" ]; then
    echo "linux-bench: no TSC reader (cpio could not take usr/lib/oxen/tsc out of the initramfs)"
    echo "linux-bench: done"
    exit 1
fi
banner() { oxl console --dump linux 2>/dev/null | grep "Oxen domU: TSC " | tail -n 1; }

set -- $("$tsc"); tsc0=$1; mono0=$2
oxl create "$cfg" > /dev/null
set -- $("$tsc"); echo "linux-bench: create returned tsc=$1 mono=$2"
# Polled every 0.2 s of dom0's clock; the figures come from the TSC the guest
# read, not from when the poll saw it.
n=0
line=
while [ $n -lt 3000 ]; do
    line=$(banner)
    [ -n "$line" ] && break
    sleep 0.2
    n=$((n + 1))
done
set -- $("$tsc"); tsc1=$1; mono1=$2
echo "linux-bench: before tsc=$tsc0 mono=$mono0"
echo "linux-bench: seen tsc=$tsc1 mono=$mono1"
echo "linux-bench: banner $(oxl console --dump linux | grep -m 1 'Oxen domU: Linux ')"
echo "linux-bench: guest $line"
oxl destroy linux
# The hypervisor's exit lines come when the vCPUs' CPUs notice the domain is
# dying.
sleep 3
echo "linux-bench: done"
