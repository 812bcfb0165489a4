#!/bin/sh
# A Linux domU whose root filesystem is a virtio disk served from dom0 (issue
# 11), run in dom0 by `dom0-linux-disk-svm` and `dom0-linux-io-vmx` (with
# linux_disk=short on dom0's command line, which no test uses now: one boot,
# the file checked from dom0 only): the ext4 image xtask
# made of the domU's tree (/usr/lib/oxen/linux/rootfs.ext4.gz) becomes
# /var/lib/oxen/root.img, attached as `disk = ['...,raw,xvda,rw']` and booted
# with root=/dev/vda rw. The domU writes a file and syncs; the domain is
# destroyed and created again, and the file is there with the same checksum.
# On the way: oxl block-list, the device model's log, a second read-write
# attach of the image and a missing image refused before anything is made,
# and free memory back to the byte with no device model left.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "linux-disk: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=600
img=/var/lib/oxen/root.img
err=/tmp/linux-disk.err

# dom0's root is its initramfs, a tmpfs mostly full of what it carries: the
# image gets a tmpfs of its own.
mkdir -p /var/lib/oxen
grep -q " /var/lib/oxen " /proc/mounts || mount -t tmpfs -o size=48m oxen-images /var/lib/oxen
gunzip -c /usr/lib/oxen/linux/rootfs.ext4.gz > "$img"
echo "linux-disk: $img is $(stat -c %s "$img") bytes"
# disk-1: the Linux domU's config with its root on the image.
sed -e 's/^name = .*/name = "disk-1"/' \
    -e 's|^extra = .*|extra = "console=ttyS0,115200 8250.nr_uarts=1 quiet root=/dev/vda rw"|' \
    "$(linux_cfg)" > /tmp/disk-1.cfg
echo "disk = ['$img,raw,xvda,rw']" >> /tmp/disk-1.cfg
disk_line=$(grep -n '^disk' /tmp/disk-1.cfg | cut -d: -f1)

tell() { printf '%s\n' "$2" | oxl console "$1" > /dev/null 2>&1; }
# What "KEY value END" the domain last said on its console.
said() { oxl console --dump "$1" 2>/dev/null | sed -n "s/.*$2 \([^ ]*\) END.*/\1/p" | tail -n 1; }
has_said() { [ -n "$(said "$1" "$2")" ]; }
booted() { oxl console --dump "$1" 2>/dev/null | grep -q "Oxen domU: Linux .* on .* CPU(s)" && oxl console --dump "$1" | tail -n 3 | grep -q 'domU:.*# '; }
dm_running() { pidof oxen-dm > /dev/null; }
no_dm() { ! dm_running; }
back() { [ "$(free_kib)" = "$free0" ]; }

free0=$(free_kib)
check "create disk-1 with its root on a virtio disk" "oxl create failed" oxl create /tmp/disk-1.cfg
check "its device model runs" "no oxen-dm process" dm_running
check "disk-1 boots to its shell" "no shell in $boot_s s" wait_for "$boot_s" booted disk-1
check "its root is the disk" "no 'root filesystem /dev/vda (ext4, rw)' line" \
    sh -c 'oxl console --dump disk-1 | grep -q "Oxen domU: root filesystem /dev/vda (ext4, rw)"'
tell disk-1 'echo "ROOT $(cat /etc/oxen-root) END"'
wait_for 30 has_said disk-1 ROOT
check "the disk's own files are its root" "it said '$(said disk-1 ROOT)'" [ "$(said disk-1 ROOT)" = disk ]
oxl block-list disk-1
check "oxl block-list shows the disk connected" "$(oxl block-list disk-1 | tail -n 1)" \
    sh -c "oxl block-list disk-1 | grep -q '^51712 *0 *0 *4 .* w *$img'"
check "oxl list --json shows the disk and its device model" "$(oxl list --json disk-1)" \
    sh -c "oxl list --json disk-1 | grep -q '\"disks\": \\[{\"vdev\": \"xvda\", \"target\": \"$img\", \"mode\": \"w\".*\"running\": true'"
check "the device model logs where an admin looks" "no ready line in /var/log/oxen/disk-1.dm.log" \
    grep -q ready /var/log/oxen/disk-1.dm.log

# 1 MiB of random bytes, written and synced (sync flushes the disk: FLUSH).
tell disk-1 'dd if=/dev/urandom of=/root/data bs=4096 count=256 2>/dev/null; sync; echo "SUM $(md5sum /root/data | cut -d " " -f 1) END"'
wait_for 120 has_said disk-1 SUM
sum1=$(said disk-1 SUM)
echo "linux-disk: /root/data written, md5 $sum1"
check "a file written and synced on the disk" "no checksum" [ -n "$sum1" ]

# Refused before anything is made: the image again read-write, a missing image.
sed -e 's/^name = .*/name = "disk-2"/' /tmp/disk-1.cfg > /tmp/disk-2.cfg
refused() { ! oxl create "$1" > /dev/null 2> "$err" && cat "$err" && grep -q "$2" "$err" && gone "${3:-disk-2}"; }
check "a second read-write attach of the image is refused" "$(cat "$err" 2>/dev/null)" \
    refused /tmp/disk-2.cfg "/tmp/disk-2.cfg:$disk_line: disk 1 (xvda): $img is attached to another domain"
sed -e "s|^disk = .*|disk = ['/var/lib/oxen/nope.img,raw,xvda,rw']|" /tmp/disk-2.cfg > /tmp/disk-3.cfg
check "a missing image is refused with its line" "$(cat "$err" 2>/dev/null)" \
    refused /tmp/disk-3.cfg "/tmp/disk-3.cfg:$disk_line: disk 1 (xvda): /var/lib/oxen/nope.img: No such file or directory"

check "destroy disk-1" "oxl destroy failed" oxl destroy disk-1
check "its device model ended with it" "oxen-dm still runs" wait_for 10 no_dm
check "memory back after the first boot" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back

# dom0 reads the same bytes from the image (the domU flushed them; its device
# model fsynced and closed the file). Read-write: the domain ended as by a power
# cut, so ext4 replays its journal first (read-only it would refuse).
mkdir -p /mnt/root-img
dom0_sum=$(mount -t ext4 -o loop "$img" /mnt/root-img && md5sum /mnt/root-img/root/data | cut -d " " -f 1)
umount /mnt/root-img 2>/dev/null
echo "linux-disk: dom0 reads /root/data from $img: md5 $dom0_sum"
check "dom0 reads the file from the image with the same checksum" "md5 '$dom0_sum', was '$sum1'" \
    sh -c "[ -n '$sum1' ] && [ '$dom0_sum' = '$sum1' ]"

# linux_disk=short (the Bochs test): one boot; the second is QEMU's.
case " $(cat /proc/cmdline) " in
*" linux_disk=short "*)
    echo "linux-disk: done, $failed failed"
    exit 0 ;;
esac

check "create disk-1 again" "oxl create failed" oxl create /tmp/disk-1.cfg
check "disk-1 boots from the disk again" "no shell in $boot_s s" wait_for "$boot_s" booted disk-1
tell disk-1 'echo "SUM2 $(md5sum /root/data | cut -d " " -f 1) END"'
wait_for 60 has_said disk-1 SUM2
sum2=$(said disk-1 SUM2)
echo "linux-disk: after destroy and create, /root/data has md5 $sum2"
check "the file is there with the same checksum" "md5 '$sum2', was '$sum1'" [ -n "$sum1" ] && [ "$sum2" = "$sum1" ]
check "destroy disk-1 again" "oxl destroy failed" oxl destroy disk-1
check "no device model left" "oxen-dm still runs" wait_for 10 no_dm
check "memory back to the byte" "free $(free_kib) KiB, was $free0 KiB" wait_for 30 back
# What the device model said over both boots (requests, bytes, flushes).
sed 's/^/linux-disk: dm log: /' /var/log/oxen/disk-1.dm.log
echo "linux-disk: done, $failed failed"
