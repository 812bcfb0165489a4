#!/bin/sh
# Disk and network throughput of a Linux domU through its virtio devices (issue
# 11, "Measure"), run in dom0 by `cargo xtask bench --only io`, against dom0
# doing the same directly in the same run. Each figure is one line
#   io-bench: RESULT WHAT WHO BYTES SECONDS DOMU_EXITS DOM0_EXITS
# (WHO: dom0 or domu; the exit counts are the domains' own, from `oxl list
# --json`, over that transfer, less those of the same typed command moving
# nothing for the domU's disk transfers; SECONDS from /proc/uptime before and
# after, in the system that moved the bytes: 10 ms steps), then
# "io-bench: done". xtask makes the table.
#
# The image lives in a tmpfs in dom0 (there is no disk under the emulator that
# is not itself a file in RAM): dom0's figures are memory copies, the domU's
# are that plus the whole virtio path (a request per 4 KiB page or 1 MiB
# block through the ioreq page, oxen-dm's read or write on the same file, an
# interrupt back).
. "$(dirname "$0")/lib.sh"
mib=${IO_BENCH_MIB:-32}
img=/var/lib/oxen/bench.img
mkdir -p /var/lib/oxen
grep -q " /var/lib/oxen " /proc/mounts || mount -t tmpfs -o size=$((mib + 16))m oxen-images /var/lib/oxen
dd if=/dev/urandom of="$img" bs=1048576 count="$mib" 2>/dev/null

exits() { oxl list --json "$1" | sed -n 's/.*"exits": *\([0-9]*\).*/\1/p' | head -n 1; }
uptime_s() { cut -d ' ' -f 1 /proc/uptime; }
# "A:B" (two uptimes) as B - A seconds.
span() { echo "$1" | awk -F: '{ printf "%.2f", $2 - $1 }'; }
bytes=$((mib * 1048576))
tell() { printf '%s\n' "$2" | oxl console "$1" > /dev/null 2>&1; }
said() { oxl console --dump "$1" 2>/dev/null | sed -n "s/.*$2 \([^ ]*\) END.*/\1/p" | tail -n 1; }
has_said() { [ -n "$(said "$1" "$2")" ]; }
booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on .* CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }

# Sequential transfers go over the image ROUNDS times, so that each takes a
# few hundred 10 ms steps of /proc/uptime on both sides.
rounds=${IO_BENCH_ROUNDS:-4}
# dom0 alone, on the image file.
for what in seq-read seq-write read-4k; do
    n=$rounds
    case $what in
    seq-read) set -- dd if="$img" of=/dev/null bs=1048576 ;;
    seq-write) set -- dd if=/dev/zero of="$img" bs=1048576 count="$mib" conv=notrunc,fsync ;;
    read-4k) set -- dd if="$img" of=/dev/null bs=4096; n=1 ;;
    esac
    d0=$(exits Domain-0)
    a=$(uptime_s)
    i=0
    while [ $i -lt $n ]; do "$@" 2>/dev/null; i=$((i + 1)); done
    echo "io-bench: RESULT $what dom0 $((bytes * n)) $(span "$a:$(uptime_s)") 0 $(($(exits Domain-0) - d0))"
done

# The domU: the image as its disk (/dev/vda), a vif on xenbr0; its root stays
# in its RAM. O_DIRECT so that its page cache answers nothing.
sed -e 's/^name = .*/name = "io-1"/' \
    -e "s|^extra = .*|extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet oxen.ip=10.0.2.51/24 oxen.gw=10.0.2.2\"|" \
    "$(linux_cfg)" > /tmp/io-1.cfg
echo "disk = ['$img,raw,xvda,rw']" >> /tmp/io-1.cfg
echo "vif = ['bridge=xenbr0']" >> /tmp/io-1.cfg
oxl create /tmp/io-1.cfg || { echo "io-bench: oxl create failed"; echo "io-bench: done"; exit 0; }
wait_for 600 booted io-1 || echo "io-bench: io-1 did not boot"
# "timed K CMD" types a line running CMD K times into io-1 and waits for it: sets $t (the domU's own
# "start:end" uptimes) and $du/$d0x (io-1's and dom0's exits meanwhile). The
# exits include typing the line and the domU echoing it (its UART, ~10 exits a
# byte) and printing the result: the callers subtract the same command run with
# nothing to move.
n=0
timed() {
    n=$((n + 1))
    u=$(exits io-1); d0=$(exits Domain-0)
    tell io-1 "a=\$(cut -d ' ' -f 1 /proc/uptime); i=0; while [ \$i -lt $1 ]; do $2 2>/dev/null; i=\$((i + 1)); done; echo \"R$n \$a:\$(cut -d ' ' -f 1 /proc/uptime) END\""
    wait_for 600 has_said io-1 "R$n"
    t=$(said io-1 "R$n")
    du=$(($(exits io-1) - u)); d0x=$(($(exits Domain-0) - d0))
}
for what in seq-read seq-write read-4k; do
    k=$rounds
    case $what in
    seq-read) cmd="dd if=/dev/vda of=/dev/null bs=1048576 iflag=direct" ;;
    seq-write) cmd="dd if=/dev/zero of=/dev/vda bs=1048576 count=$mib oflag=direct conv=fsync" ;;
    read-4k) cmd="dd if=/dev/vda of=/dev/null bs=4096 iflag=direct"; k=1 ;;
    esac
    # The same line moving nothing (count=0: dd opens /dev/vda and stops).
    timed "$k" "$(echo "$cmd" | sed 's/ count=[0-9]*//') count=0"
    base_u=$du; base_d=$d0x
    timed "$k" "$cmd"
    echo "io-bench: RESULT $what domu $((bytes * k)) $(span "$t") $((du > base_u ? du - base_u : 0)) $((d0x > base_d ? d0x - base_d : 0))"
done

# TCP from the domU to dom0 over the bridge: 32 MiB into nc in dom0.
tcp_mib=32
# What arrived is counted at the receiving end: a refused connection moves nothing. The
# listener's stdin stays open (a script's background job has /dev/null there, and nc
# closes the connection at its EOF).
rm -f /tmp/rx1
(sleep 900 | nc -l -p 5001 | wc -c > /tmp/rx1) &
sleep 1
u=$(exits io-1); d0=$(exits Domain-0)
tell io-1 "a=\$(cut -d ' ' -f 1 /proc/uptime); dd if=/dev/zero bs=1048576 count=$tcp_mib 2>/dev/null | nc 10.0.2.15 5001; echo \"T1 \$a:\$(cut -d ' ' -f 1 /proc/uptime) END\""
wait_for 600 has_said io-1 T1
sleep 1
pkill -f 'sleep 900'
wait_for 10 test -s /tmp/rx1
echo "io-bench: RESULT tcp-to-dom0 domu $(cat /tmp/rx1 2>/dev/null || echo 0) $(span "$(said io-1 T1)") $(($(exits io-1) - u)) $(($(exits Domain-0) - d0))"

# TCP from one domU to another over the bridge: 32 MiB into nc in io-2 (the
# exits are both domUs').
sed -e 's/^name = .*/name = "io-2"/' \
    -e "s|^extra = .*|extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet oxen.ip=10.0.2.52/24 oxen.gw=10.0.2.2\"|" \
    "$(linux_cfg)" > /tmp/io-2.cfg
echo "vif = ['bridge=xenbr0']" >> /tmp/io-2.cfg
if oxl create /tmp/io-2.cfg && wait_for 600 booted io-2; then
    tell io-2 '(echo "RX2 $(nc -l -p 5002 | wc -c) END") &'
    sleep 2
    u=$(($(exits io-1) + $(exits io-2))); d0=$(exits Domain-0)
    tell io-1 "a=\$(cut -d ' ' -f 1 /proc/uptime); dd if=/dev/zero bs=1048576 count=$tcp_mib 2>/dev/null | nc 10.0.2.52 5002; echo \"T2 \$a:\$(cut -d ' ' -f 1 /proc/uptime) END\""
    wait_for 600 has_said io-1 T2
    wait_for 10 has_said io-2 RX2
    echo "io-bench: RESULT tcp-to-domu domu $(said io-2 RX2) $(span "$(said io-1 T2)") $(($(exits io-1) + $(exits io-2) - u)) $(($(exits Domain-0) - d0))"
else
    echo "io-bench: io-2 did not boot"
fi
oxl destroy io-1
oxl destroy io-2
for d in io-1 io-2; do
    sed "s/^/io-bench: $d dm log: /" "/var/log/oxen/$d.dm.log"
done
echo "io-bench: done"
