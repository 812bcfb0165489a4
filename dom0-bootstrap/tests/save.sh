#!/bin/sh
# oxl save / restore (issue 12, docs/migration.md), run in dom0 by the system
# test `dom0-save-svm`: a minimal domU ticking every 500 ms is checkpointed
# (save -c: it runs on), then saved (it is destroyed, its memory back) and
# restored from the file: the same name, a new ID, and its counter goes on
# from where it stopped (no tick repeated, none skipped). A corrupted and a
# truncated copy of the file are refused with the reason and leave nothing
# behind, and so are a file from the other vendor and one that needs more
# memory than is free; free memory ends where it started.
. /usr/lib/oxen/tests/lib.sh
failed=0
echo "save: start"
first_tick() { oxl console --dump "$1" | sed -n 's/.*minimal: tick \([0-9]*\).*/\1/p' | head -n 1; }
free0=$(free_kib)

check "save: create minimal-1" "oxl create failed" oxl create /etc/oxen/minimal-1.cfg
check "save: it ticks" "no ticks" wait_for 30 ticked_past minimal-1 2
id1=$(field minimal-1 2)

# A checkpoint: the file is written and the domain runs on.
check "save: save -c" "oxl save -c failed" oxl save -c minimal-1 /tmp/m1-checkpoint.save
t=$(last_tick minimal-1)
check "save: it runs on after save -c" "no tick past $t" wait_for 10 ticked_past minimal-1 "$t"

# The save proper: gone, memory back.
t=$(last_tick minimal-1)
check "save: save" "oxl save failed" oxl save minimal-1 /tmp/m1.save
check "save: the domain is gone after save" "still listed" gone minimal-1
settled() { [ "$(free_kib)" = "$free0" ]; }
check "save: memory back after save" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
size=$(wc -c < /tmp/m1.save)
echo "save: file of $size bytes; last tick seen before the save: $t"

# Refused: a corrupted copy (one byte in its middle changed: the memory's
# pages are most of it) and one cut in half.
cp /tmp/m1.save /tmp/bad.save
printf 'U' | dd of=/tmp/bad.save bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
# (if that byte was a U already, a V)
cmp -s /tmp/m1.save /tmp/bad.save && printf 'V' | dd of=/tmp/bad.save bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null
# refused FILE WHAT WORD: restoring FILE fails, says WORD, leaves no domain.
refused() {
    oxl restore "$1" > /tmp/refused.out 2>&1
    local status=$?
    cat /tmp/refused.out
    check "save: a $2 file is refused" "status $status" [ "$status" -ne 0 ]
    check "save: it says why ($3)" "see the message above" grep -q "$3" /tmp/refused.out
    check "save: no domain left by the $2 file" "minimal-1 listed" gone minimal-1
}
refused /tmp/bad.save corrupted corrupted
head -c $((size / 2)) /tmp/m1.save > /tmp/short.save
refused /tmp/short.save truncated truncated

# Refused: a file saved on the other vendor (its opening, made by xtask with
# the stream's encoder: restore decides from the header, config and CPUID).
case "$(grep -m 1 vendor_id /proc/cpuinfo)" in
*AuthenticAMD*) refused /usr/lib/oxen/tests/saved-on-intel.save cross-vendor "saved on Intel VT-x" ;;
*) refused /usr/lib/oxen/tests/saved-on-amd.save cross-vendor "saved on AMD-V" ;;
esac

# Refused: too little memory. A domain takes all but about 8 MiB of what is
# free, so minimal-1's 16 MiB are not there.
big=$(( $(free_kib) / 1024 - 8 ))
printf 'name = "big"\nmemory = %d\nvcpus = 1\nkernel = "/usr/lib/oxen/guests/minimal.elf"\n' "$big" > /tmp/big.cfg
check "save: create big ($big MiB)" "oxl create failed" oxl create /tmp/big.cfg
echo "save: $(( $(free_kib) / 1024 )) MiB free beside big"
refused /tmp/m1.save too-little-memory "the domain needs 16 MiB but the hypervisor has"
check "save: destroy big" "oxl destroy failed" oxl destroy big
check "save: memory back after the refusals" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled

# Restore: the same name, a new ID, the counter goes on.
check "save: restore" "oxl restore failed" oxl restore /tmp/m1.save
id2=$(field minimal-1 2)
new_id() { [ -n "$id2" ] && [ "$id2" != "$id1" ]; }
check "save: restored as minimal-1 with a new ID" "id $id2 (was $id1)" new_id
check "save: it ticks again" "no tick" wait_for 10 ticked_past minimal-1 "$t"
f=$(first_tick minimal-1)
echo "save: first tick after the restore: $f (last before the save: $t)"
goes_on() { [ -n "$f" ] && [ "$f" -gt "$t" ] && [ "$f" -le $((t + 2)) ]; }
check "save: its counter goes on (no tick repeated or skipped)" "first tick $f after $t" goes_on
check "save: destroy it" "oxl destroy failed" oxl destroy minimal-1
check "save: memory back at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 10 settled
echo "save: done, $failed failed"
