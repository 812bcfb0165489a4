#!/bin/sh
# Save and restore of a Linux domU whose root is a virtio disk served by
# oxen-dm (issue 12), run in dom0 by `dom0-linux-save-svm` after linux-save.sh:
# disk-save (linux.cfg's domU, root=/dev/vda rw on an image in dom0) writes a
# file to its disk and syncs, then prints "COUNT n" every 100 ms. `oxl save -c`
# freezes its device model with it (the devices' state goes into the file) and
# both run on: the disk still takes writes. `oxl save` destroys it, its device
# model ends, memory comes back to the byte. `oxl restore` starts a device
# model from the saved state: the counter goes on with no value repeated or
# skipped, the file reads back the same from the disk, a file written and
# synced after the restore reaches the image (dom0 mounts it after the end).
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and
# "linux-disk-save: done, N failed".
. "$(dirname "$0")/lib.sh"
boot_s=${1:-600}
dom=disk-save
out=/tmp/disk-save.out

# The image and the save file in tmpfs of their own (dom0's root is its
# initramfs, mostly full).
images=/var/lib/oxen-save
mkdir -p "$images" && mount -t tmpfs -o size=48m oxen-save-images "$images"
img=$images/root.img
gunzip -c /usr/lib/oxen/linux/rootfs.ext4.gz > "$img"
files=/tmp/disk-save.files
mkdir -p "$files" && mount -t tmpfs -o size=90% disk-save "$files"
sed -e "s/^name = .*/name = \"$dom\"/" \
    -e 's|^extra = .*|extra = "console=ttyS0,115200 8250.nr_uarts=1 quiet root=/dev/vda rw"|' \
    "$(linux_cfg)" > /tmp/$dom.cfg
echo "disk = ['$img,raw,xvda,rw']" >> /tmp/$dom.cfg

ask() { printf '%s\n' "$1" | oxl console "$dom" > "$out" 2>&1; }
answer() { tr -d '\r' < "$out" | sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" | tail -n 1; }
got() { oxl console --dump "$dom" > "$out" 2>&1; [ -n "$(answer "$1")" ]; }
ask_for() { ask "$2"; wait_for 120 got "$1"; }
last_count() { oxl console --dump "$dom" > /tmp/disk-save.now; counts /tmp/disk-save.now | tail -n 1; }
counted_past() { local c; c=$(last_count); [ -n "$c" ] && [ "$c" -gt "$1" ]; }
dm_running() { pidof oxen-dm > /dev/null; }
no_dm() { ! dm_running; }
settled() { [ "$(free_kib)" = "$free0" ]; }

echo "linux-disk-save: start"
free0=$(free_kib)
check "disk-save: create $dom with its root on a virtio disk" "oxl create failed" oxl create /tmp/$dom.cfg
check "disk-save: $dom boots to its shell" "no banner and prompt in $boot_s s" wait_for "$boot_s" linux_booted "$dom"
check "disk-save: its root is the disk" "no 'root filesystem /dev/vda (ext4, rw)' line" \
    sh -c "oxl console --dump $dom | grep -q 'Oxen domU: root filesystem /dev/vda (ext4, rw)'"

# A file on the disk, synced; then the counter.
ask_for SUM0 'dd if=/dev/urandom of=/root/data bs=4096 count=64 2>/dev/null; sync; echo "SUM0 $(md5sum /root/data | cut -c 1-32) END"'
sum0=$(answer SUM0)
check "disk-save: a file written and synced on its disk" "no checksum in: $(tail -n 3 $out)" [ ${#sum0} = 32 ]
ask '(i=0; while :; do i=$((i + 1)); echo "COUNT $i"; usleep 100000; done) & echo "COUNTER started END"'
check "disk-save: its counter runs" "no COUNT past 20 in 60 s" wait_for 60 counted_past 20

# The checkpoint: the device model frozen and thawed with it; the disk still
# takes a synced write.
t0=$(last_count)
check "disk-save: save -c" "oxl save -c failed" oxl save -c "$dom" "$files/checkpoint.save"
check "disk-save: it runs on after save -c" "no COUNT past $t0 in 20 s" wait_for 20 counted_past $((t0 + 10))
check "disk-save: its disk takes writes after save -c" "no answer" \
    ask_for AFTER 'echo checkpoint > /root/after; sync; echo "AFTER $(cat /root/after) END"'
check "disk-save: the device model logged the freeze" "no 'frozen for a save' line" \
    grep -q "frozen for a save" /var/log/oxen/$dom.dm.log
rm -f "$files/checkpoint.save"

# The save: paused first, so the console's end is known.
check "disk-save: pause it" "oxl pause failed" oxl pause "$dom"
oxl console --dump "$dom" > /tmp/disk-save.before
t=$(counts /tmp/disk-save.before | tail -n 1)
id1=$(field "$dom" 2)
check "disk-save: save" "oxl save failed" oxl save "$dom" "$files/disk.save"
check "disk-save: the domain is gone after save" "still listed" gone "$dom"
check "disk-save: its device model ended with it" "oxen-dm still runs" wait_for 10 no_dm
check "disk-save: memory back to the byte after save" "$free0 KiB before, $(free_kib) KiB now" wait_for 30 settled
echo "linux-disk-save: file of $(stat -c %s $files/disk.save) bytes; last COUNT before it $t"

# Restore: a device model started from the saved state; the counter goes on.
oxl restore "$files/disk.save" > /tmp/disk-save.restore 2>&1; s=$?
cat /tmp/disk-save.restore
check "disk-save: restore" "status $s" [ "$s" -eq 0 ]
id2=$(field "$dom" 2)
check "disk-save: restored as $dom with a new ID" "id $id2 (was $id1)" sh -c "[ -n '$id2' ] && [ '$id2' != '$id1' ]"
check "disk-save: a device model serves it again" "no oxen-dm process" dm_running
check "disk-save: it went on from the saved device state" "no 'resuming 1 device(s)' line" \
    grep -q "resuming 1 device(s) from" /var/log/oxen/$dom.dm.log
check "disk-save: its counter goes on" "no COUNT past $t in 20 s" wait_for 20 counted_past $((t + 5))
oxl console --dump "$dom" > /tmp/disk-save.after
cat /tmp/disk-save.before /tmp/disk-save.after > /tmp/disk-save.joined
counts /tmp/disk-save.joined > /tmp/disk-save.seq
echo "linux-disk-save: around the save: $(awk -v t="$t" '$1 >= t - 2 && $1 <= t + 3' /tmp/disk-save.seq | tr '\n' ' ')"
check "disk-save: its counter goes on with $((t + 1)) after $t, none repeated or skipped" "see the lines above" consecutive < /tmp/disk-save.seq

# The disk after the restore: the file before the save reads back; a new one
# is written and synced.
ask_for SUM1 'echo 3 > /proc/sys/vm/drop_caches; echo "SUM1 $(md5sum /root/data | cut -c 1-32) END"'
sum1=$(answer SUM1)
check "disk-save: the file written before the save reads back the same from its disk" "md5 '$sum1', was $sum0" [ "$sum1" = "$sum0" ]
ask_for SUM2 'dd if=/dev/urandom of=/root/restored bs=4096 count=64 2>/dev/null; sync; echo "SUM2 $(md5sum /root/restored | cut -c 1-32) END"'
sum2=$(answer SUM2)
check "disk-save: its disk takes a synced write after the restore" "no checksum in: $(tail -n 3 $out)" [ ${#sum2} = 32 ]
ask 'kill %1; echo "COUNTER stopped END"'

check "disk-save: destroy it" "oxl destroy failed" oxl destroy "$dom"
check "disk-save: no device model left" "oxen-dm still runs" wait_for 10 no_dm
check "disk-save: memory back to the byte at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 30 settled

# dom0 finds the file written after the restore in the image.
mkdir -p /mnt/disk-save
dom0_sum=$(mount -t ext4 -o loop "$img" /mnt/disk-save && md5sum /mnt/disk-save/root/restored | cut -c 1-32)
umount /mnt/disk-save 2>/dev/null
check "disk-save: dom0 reads the file written after the restore from the image" "md5 '$dom0_sum', was '$sum2'" \
    sh -c "[ -n '$sum2' ] && [ '$dom0_sum' = '$sum2' ]"
sed 's/^/linux-disk-save: dm log: /' /var/log/oxen/$dom.dm.log
rm -f "$files/disk.save"; umount "$files"; umount "$images"
echo "linux-disk-save: done, $failed failed"
