#!/bin/sh
# A domU's device model killed in the middle of its disk I/O (issue 11: "faults
# lose nothing and leak nothing"), run in dom0 by `dom0-linux-net-svm` after
# linux-net.sh. The Linux domU dm-1 has its root on a virtio disk; it writes a
# file and syncs it, then writes in a loop; `kill -9` ends its oxen-dm. The
# warden oxen-dm forked takes the devices over and fails every request: the
# domU's writes fail with I/O errors (its kernel says so) while its shell still
# answers; a test guest beside it ticks on; the device model's log says what
# happened, `oxl list --json` shows it not running and `oxl block-list` the disk
# closed. Destroyed: no oxen-dm left, memory back to the byte, and the file it
# flushed before the kill is in the image with its checksum.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "linux-dm-death: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=600
img=/var/lib/oxen/dm-death.img

mkdir -p /var/lib/oxen
grep -q " /var/lib/oxen " /proc/mounts || mount -t tmpfs -o size=48m oxen-images /var/lib/oxen
gunzip -c /usr/lib/oxen/linux/rootfs.ext4.gz > "$img"
sed -e 's/^name = .*/name = "dm-1"/' \
    -e 's|^extra = .*|extra = "console=ttyS0,115200 8250.nr_uarts=1 quiet root=/dev/vda rw"|' \
    "$(linux_cfg)" > /tmp/dm-1.cfg
echo "disk = ['$img,raw,xvda,rw']" >> /tmp/dm-1.cfg

tell() { printf '%s\n' "$2" | oxl console "$1" > /dev/null 2>&1; }
said() { oxl console --dump "$1" 2>/dev/null | sed -n "s/.*$2 \([^ ]*\) END.*/\1/p" | tail -n 1; }
has_said() { [ -n "$(said "$1" "$2")" ]; }
booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on .* CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }
dm_pid() { oxl list --json dm-1 | sed -n 's/.*"device_model": {"pid": \([0-9]*\).*/\1/p'; }
no_dm() { ! pidof oxen-dm > /dev/null; }
back() { [ "$(free_kib)" = "$free0" ]; }
io_errors() { oxl console --dump dm-1 | grep -q 'I/O error, dev vda'; }
log=/var/log/oxen/dm-1.dm.log

free0=$(free_kib)
check "create minimal-1 beside it" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "create dm-1 with its root on a virtio disk" "oxl create failed" oxl create /tmp/dm-1.cfg
check "dm-1 boots to its shell" "no shell in $boot_s s" wait_for "$boot_s" booted dm-1

tell dm-1 'dd if=/dev/urandom of=/root/kept bs=4096 count=64 2>/dev/null; sync; echo "SUM $(md5sum /root/kept | cut -d " " -f 1) END"'
wait_for 120 has_said dm-1 SUM
sum=$(said dm-1 SUM)
check "a file written and synced before the kill" "no checksum" [ -n "$sum" ]

# Writes that go to the disk (fsync) until one fails.
tell dm-1 '(i=0; while [ $i -lt 100000 ]; do dd if=/dev/urandom of=/root/busy bs=65536 count=4 conv=fsync 2>/dev/null || break; i=$((i + 1)); done; echo "WERR $i END") &'
sleep 5
pid=$(dm_pid)
tick=$(last_tick minimal-1)
echo "linux-dm-death: killing oxen-dm pid $pid in the middle of dm-1's writes (minimal-1 at tick $tick)"
check "its device model runs" "no pid in oxl list --json" [ -n "$pid" ]
kill -9 "$pid"
check "the domU's writes fail after its device model is killed" "no WERR in 120 s" wait_for 120 has_said dm-1 WERR
check "its kernel reports I/O errors on the disk" "no 'I/O error, dev vda' on its console" io_errors
tell dm-1 'echo "ALIVE $((6 * 7)) END"'
wait_for 30 has_said dm-1 ALIVE
check "its shell still answers" "it said '$(said dm-1 ALIVE)'" [ "$(said dm-1 ALIVE)" = 42 ]
check "minimal-1 ticks on" "tick $(last_tick minimal-1), was $tick" wait_for 10 ticked_past minimal-1 "${tick:-0}"
check "the device model's log says it died and its devices fail" "$(tail -n 3 "$log")" \
    grep -q "the device model died while serving" "$log"
check "oxl list --json shows the device model not running" "$(oxl list --json dm-1)" \
    sh -c "oxl list --json dm-1 | grep -q '\"device_model\": {\"pid\": $pid, \"running\": false'"
oxl block-list dm-1
check "oxl block-list shows the disk closed" "$(oxl block-list dm-1 | tail -n 1)" \
    sh -c "oxl block-list dm-1 | grep -q '^51712 *0 *0 *6 .* w *$img'"

check "destroy dm-1" "oxl destroy failed" oxl destroy dm-1
check "destroy minimal-1" "oxl destroy failed" oxl destroy minimal-1
check "no device model left" "oxen-dm still runs: $(pidof oxen-dm)" wait_for 10 no_dm
check "memory back to the byte" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back

mkdir -p /mnt/dm-img
dom0_sum=$(mount -t ext4 -o loop "$img" /mnt/dm-img && md5sum /mnt/dm-img/root/kept | cut -d " " -f 1)
umount /mnt/dm-img 2>/dev/null
echo "linux-dm-death: dom0 reads /root/kept from $img: md5 $dom0_sum"
check "the file flushed before the kill is in the image" "md5 '$dom0_sum', was '$sum'" \
    sh -c "[ -n '$sum' ] && [ '$dom0_sum' = '$sum' ]"
sed 's/^/linux-dm-death: dm log: /' "$log"
echo "linux-dm-death: done, $failed failed"
