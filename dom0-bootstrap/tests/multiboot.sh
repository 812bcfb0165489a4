#!/bin/sh
# A Multiboot (v1) domU, run in dom0 by the `dom0-multiboot-*` system tests
# (tests/system.toml): the multiboot test guest prints what its loader gave it,
# and each value is checked here against /etc/oxen/multiboot.cfg and the
# ramdisk file itself (its length and SHA-256, computed by dom0).
. "$(dirname "$0")/lib.sh"
cfg=/etc/oxen/multiboot.cfg
state_is() { [ "$(field "$1" 5)" = "$2" ]; }
# A config value, without its quotes.
conf() { sed -n "s/^$1 *= *\"\{0,1\}\([^\"]*\)\"\{0,1\} *\$/\1/p" "$cfg"; }
mem_mib=$(conf memory)
ramdisk=$(conf ramdisk)
line=$(conf extra)
rd_len=$(wc -c < "$ramdisk")
rd_sha=$(sha256sum "$ramdisk" | cut -d' ' -f1)
echo "multiboot: config: memory $mem_mib MiB, cmdline '$line', ramdisk $ramdisk: $rd_len bytes, sha256 $rd_sha"

free0=$(free_kib)
check "create multiboot" "oxl create failed" oxl create "$cfg"
check "multiboot powers off, kept (on_poweroff = preserve)" "state $(field multiboot 5)" \
    wait_for 60 state_is multiboot shutdown
out=$(oxl console --dump multiboot | tr -d '\r')
# The value after "multiboot: PREFIX" on the guest's first such line.
after() { echo "$out" | sed -n "s/^multiboot: $1//p" | head -n 1; }

check "multiboot: entered with the loader magic" "$(after 'entered with ')" \
    [ "$(after 'entered with eax ' | cut -d, -f1)" = 0x2badb002 ]
check "multiboot: entry state per the spec" "$(after 'entry state ')" \
    sh -c "echo \"\$1\" | grep -q ': protected, paging off, interrupts off: ok\$'" - "$(after 'entry state ')"
upper=$(after 'mem_lower 640 KiB, mem_upper ' | sed 's/ KiB$//')
check "multiboot: mem_lower 640 KiB, mem_upper = memory - 1 MiB" "mem line '$(after 'mem_lower ')'" \
    [ "$upper" = $((mem_mib * 1024 - 1024)) ]
check "multiboot: command line as configured" "got '$(after 'cmdline ')'" [ "$(after 'cmdline ')" = "'$line'" ]
check "multiboot: boot loader name" "got $(after 'boot loader ')" [ "$(after 'boot loader ')" = "'Oxen'" ]
check "multiboot: one module" "got $(after 'mods_count ')" [ "$(after 'mods_count ')" = 1 ]
mod0=$(after 'module 0: ')
echo "multiboot: module 0 as reported: $mod0"
set -- $mod0
# start S end E len N string 'ramdisk' sha256 H
check "multiboot: module 0 length is the ramdisk's" "$6 bytes, the file has $rd_len" [ "$6" = "$rd_len" ]
check "multiboot: module 0 lies in the domain's RAM above 1 MiB" "start $2 end $4" \
    [ $(($2)) -ge $((0x100000)) -a $(($4)) -le $((mem_mib << 20)) -a $(($4 - $2)) = "$rd_len" ]
check "multiboot: module 0 string" "got $8" [ "$8" = "'ramdisk'" ]
check "multiboot: module 0 sha256 matches the ramdisk's" "guest $10, dom0 $rd_sha" [ "${10}" = "$rd_sha" ]
top=$(after 'mmap: [0-9]* entries, available up to ')
check "multiboot: memory map ends at the domain's memory" "available up to $top" [ $((top)) = $((mem_mib << 20)) ]
check "multiboot: memory map has RAM below 640 KiB and from 1 MiB" "see the guest's mmap lines" \
    sh -c "echo \"\$1\" | grep -q '^multiboot: mmap base 0x0 len 0xa0000 type 1\$' &&
           echo \"\$1\" | grep -q '^multiboot: mmap base 0x100000 len $(printf 0x%x $(((mem_mib - 1) << 20))) type 1\$'" - "$out"
check "multiboot: the guest's own checks" "$(after 'checks: ')" [ "$(after 'checks: ')" = "0 failed" ]

check "destroy multiboot" "oxl destroy failed" oxl destroy multiboot
# The domain leaves the list before the CPU that ran it has scrubbed and freed
# all of its memory (under Bochs, seconds for 64 MiB): wait for it.
free_is() { [ "$(free_kib)" = "$1" ]; }
check "memory back" "$free0 KiB before, $(free_kib) KiB at first, not back within 30 s" wait_for 30 free_is "$free0"

# What cannot be booted is refused with the reason: a Multiboot header asking
# for a video mode (flag 2), the checksum made to match.
bad=/tmp/multiboot-video.elf
cp /usr/lib/oxen/guests/multiboot.elf "$bad"
printf '\002\260\255\033\004\000\000\000\372\117\122\344' | dd of="$bad" bs=1 seek=4096 conv=notrunc 2>/dev/null
sed "s|^kernel = .*|kernel = \"$bad\"|; s|^name = .*|name = \"multiboot-video\"|" "$cfg" > /tmp/multiboot-video.cfg
msg=$(oxl create /tmp/multiboot-video.cfg 2>&1)
rc=$?
echo "multiboot: video-mode image: oxl create exits $rc: $msg"
# oxl names the kernel only for -ENOEXEC (create.rs).
check "a video-mode multiboot kernel is refused as not bootable" "exit $rc: $msg" \
    sh -c "[ $rc != 0 ] && echo \"\$1\" | grep -q 'kernel $bad: '" - "$msg"
why=$(oxl dmesg | grep 'multiboot-video.*build failed' | tail -n 1)
echo "multiboot: video-mode image: the hypervisor says: $why"
check "the hypervisor says why: the video mode" "its log: $why" \
    sh -c "echo \"\$1\" | grep -q 'requires a video mode (flag 2)'" - "$why"
check "nothing left of the refused domain" "$(oxl list)" gone multiboot-video
check "memory back after the refusal" "$free0 KiB before, $(free_kib) KiB at first, not back within 30 s" wait_for 30 free_is "$free0"
echo "multiboot: done, $failed failed"
