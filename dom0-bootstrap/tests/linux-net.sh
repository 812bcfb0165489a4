#!/bin/sh
# Linux domUs on dom0's bridge (issue 11), run in dom0 by `dom0-linux-net-svm`:
# two Linux domUs with a vif each (`vif = ['bridge=xenbr0']`: a virtio NIC
# served by oxen-dm, a tap device in dom0 on xenbr0, which dom0's init made
# with eth0 - QEMU's user network - as its port) and static addresses on the
# user network's subnet. net-a pings dom0 and fetches a file the harness serves
# on the host (through dom0's NIC); 64 MiB go from net-a to net-b over
# TCP with the same checksum at both ends; oxl network-list shows the vif; a
# vif on a bridge dom0 does not have is refused with its line; memory back.
# With linux_net=short on dom0's command line (the Bochs test, whose dom0 has no
# NIC: xenbr0 is a host-only bridge there) only net-a: it boots and pings dom0.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "linux-net: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=600
short=
case " $(cat /proc/cmdline) " in *" linux_net=short "*) short=1 ;; esac
err=/tmp/linux-net.err

# net-X: the Linux domU with one vif and address $2 on QEMU's user network.
config() {
    sed -e "s/^name = .*/name = \"$1\"/" \
        -e "s|^extra = .*|extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet oxen.ip=$2/24 oxen.gw=10.0.2.2\"|" \
        "$(linux_cfg)" > "/tmp/$1.cfg"
    echo "vif = ['bridge=xenbr0']" >> "/tmp/$1.cfg"
}
tell() { printf '%s\n' "$2" | oxl console "$1" > /dev/null 2>&1; }
said() { oxl console --dump "$1" 2>/dev/null | sed -n "s/.*$2 \([^ ]*\) END.*/\1/p" | tail -n 1; }
has_said() { [ -n "$(said "$1" "$2")" ]; }
booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on .* CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }
back() { [ "$(free_kib)" = "$free0" ]; }
no_dm() { ! pidof oxen-dm > /dev/null; }

echo "linux-net: dom0: $(ip -4 addr show xenbr0 | sed -n 's/.* inet \([^ ]*\) .*/\1/p') on xenbr0, ports: $(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')"
free0=$(free_kib)
config net-a 10.0.2.51
config net-b 10.0.2.52
check "create net-a with a vif on xenbr0" "oxl create failed" oxl create /tmp/net-a.cfg
[ -n "$short" ] || check "create net-b with a vif on xenbr0" "oxl create failed" oxl create /tmp/net-b.cfg
oxl network-list net-a
check "its tap is a port of xenbr0" "ports: $(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')" \
    sh -c "ls /sys/class/net/xenbr0/brif | grep -q '^vif[0-9]*\.0$'"
check "oxl network-list shows the vif connected" "$(oxl network-list net-a | tail -n 1)" \
    sh -c "oxl network-list net-a | grep -q '^0   0   00:16:3e:.* 4 .* xenbr0 *vif[0-9]*\.0$'"
check "net-a boots" "no shell in $boot_s s" wait_for "$boot_s" booted net-a
[ -n "$short" ] || check "net-b boots" "no shell in $boot_s s" wait_for "$boot_s" booted net-b

tell net-a 'echo "PING $(ping -c 3 -W 2 10.0.2.15 2>&1 | sed -n "s/.* \([0-9]*\) packets received.*/\1/p") END"'
wait_for 30 has_said net-a PING
check "net-a pings dom0 over the bridge" "$(said net-a PING) of 3 answered" [ "$(said net-a PING)" = 3 ]

if [ -z "$short" ]; then
    # A file from the host, through dom0's bridge and NIC: QEMU's user network
    # forwards 10.0.2.100:80 to what the system test serves (`serve`: the Linux
    # domU's root image, which dom0 carries too).
    want=$(md5sum /usr/lib/oxen/linux/rootfs.ext4.gz | cut -d " " -f 1)
    tell net-a 'wget -q -O /tmp/got http://10.0.2.100/rootfs.ext4.gz; echo "GOT $(md5sum < /tmp/got | cut -d " " -f 1) END"; echo "SIZE $(wc -c < /tmp/got) END"'
    wait_for 120 has_said net-a SIZE
    echo "linux-net: net-a fetched http://10.0.2.100/rootfs.ext4.gz: $(said net-a SIZE) bytes, md5 $(said net-a GOT); dom0's copy $(wc -c < /usr/lib/oxen/linux/rootfs.ext4.gz) bytes, md5 $want"
    check "net-a fetches a file from the host through dom0's NIC" "md5 '$(said net-a GOT)', dom0's copy '$want'" \
        [ "$(said net-a GOT)" = "$want" ]

    # 64 MiB, one random MiB sent 64 times: the same checksum at both ends.
    tell net-b 'nc -l -p 5000 | md5sum | sed "s/ .*/ END/; s/^/RECV /" &'
    sleep 2
    tell net-a 'dd if=/dev/urandom of=/tmp/mib bs=1048576 count=1 2>/dev/null; send() { i=0; while [ $i -lt 64 ]; do cat /tmp/mib; i=$((i + 1)); done; }; echo "SENT $(send | md5sum | cut -d " " -f 1) END"; t0=$(date +%s); send | nc 10.0.2.52 5000; echo "TOOK $(($(date +%s) - t0)) END"'
    wait_for 600 has_said net-a TOOK
    wait_for 30 has_said net-b RECV
    sent=$(said net-a SENT); recv=$(said net-b RECV)
    echo "linux-net: 64 MiB net-a -> net-b in $(said net-a TOOK) s: sent md5 $sent, received md5 $recv"
    check "64 MiB over TCP between the domUs, checksums equal" "sent '$sent', received '$recv'" \
        sh -c "[ -n '$sent' ] && [ '$sent' = '$recv' ]"
fi

sed -e 's/^name = .*/name = "net-c"/' -e "s/^vif = .*/vif = ['bridge=xenbr9']/" /tmp/net-a.cfg > /tmp/net-c.cfg
line=$(grep -n '^vif' /tmp/net-c.cfg | cut -d: -f1)
refused() { ! oxl create /tmp/net-c.cfg > /dev/null 2> "$err" && cat "$err" && grep -q "/tmp/net-c.cfg:$line: vif 1: there is no bridge 'xenbr9' in dom0" "$err" && gone net-c; }
check "a vif on a bridge dom0 does not have is refused" "$(cat "$err" 2>/dev/null)" refused

for d in net-a net-b; do
    oxl destroy "$d" 2>/dev/null
done
check "no device model left" "oxen-dm still runs" wait_for 10 no_dm
check "the taps are gone from xenbr0" "ports: $(ls /sys/class/net/xenbr0/brif | tr '\n' ' ')" \
    sh -c "! ls /sys/class/net/xenbr0/brif | grep -q '^vif'"
check "memory back to the byte" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back
for d in net-a net-b; do
    [ -f "/var/log/oxen/$d.dm.log" ] && sed "s/^/linux-net: $d dm log: /" "/var/log/oxen/$d.dm.log"
done
echo "linux-net: done, $failed failed"
