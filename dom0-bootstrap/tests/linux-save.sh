#!/bin/sh
# Save and restore of a running Linux domU (issue 12), run in dom0 by the
# system tests `dom0-linux-save-svm` and `dom0-linux-io-vmx` (there with
# linux_save=short: no checkpoint): the domU of
# linux.cfg (2 vCPUs, its root the initramfs in its RAM) runs a counter that
# prints "COUNT n" on its console every 100 ms and holds a file of known
# checksum in /root; `oxl save -c` (it runs on), then `oxl save` (it is
# destroyed, memory back to the byte) and `oxl restore`: the counter goes on
# from where it stopped, the file reads back the same, the shell answers, its
# clock is dom0's and its timers run at their rate; after `oxl destroy` free
# memory is where it started. Prints "check: NAME: ok|FAILED (why)" (lib.sh)
# and "linux-save: done, N failed".
#
# What "continues" means here: the counter counts loop turns, not time, so a
# pause of any length may neither repeat nor skip a value. Every COUNT line on
# the console, across the checkpoint's pause and across save and restore
# (the saved ring's end joined to the restored domain's new ring, as a line
# cut by the pause continues there), is the one before plus 1. The pause shows
# as one longer gap in time: the usleep due while the domain was stopped ends
# at once when it runs again, as a sleep does for a process that was stopped.
. "$(dirname "$0")/lib.sh"
boot_s=${1:-600}
short=
case " $(cat /proc/cmdline) " in *" linux_save=short "*) short=1 ;; esac
dom=linux-save
out=/tmp/linux-save.out
cfg=/tmp/$dom.cfg
sed -e "s/^name = .*/name = \"$dom\"/" \
    -e "s/^extra = .*/extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet$(domu_skips)\"/" \
    "$(linux_cfg)" > "$cfg"

# As in linux.sh: type a command, its output (and the counter's) in $out;
# with the counter running the console never goes quiet, so each ask lasts
# oxl console's longest linger (10 s).
ask() { printf '%s\n' "$1" | oxl console "$dom" > "$out" 2>&1; }
answer() { tr -d '\r' < "$out" | sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" | tail -n 1; }
# ask_for KEY CMD: types CMD and waits (up to 120 s: under Bochs a command
# may outlast oxl console's quiet second) for its "KEY value END" line in the
# console ring, which then is $out.
got() { oxl console --dump "$dom" > "$out" 2>&1; [ -n "$(answer "$1")" ]; }
ask_for() { ask "$2"; wait_for 120 got "$1"; }
booted() { oxl console --dump "$dom" 2>/dev/null | grep -q "Oxen domU: Linux .* on 2 CPU(s)" && oxl console --dump "$dom" | tail -n 3 | grep -q 'domU:.*# '; }
at() { echo "linux-save: $1 at $(cut -d ' ' -f 1 /proc/uptime) s"; }
last_count() { oxl console --dump "$dom" > /tmp/linux-save.now; counts /tmp/linux-save.now | tail -n 1; }
counted_past() { local c; c=$(last_count); [ -n "$c" ] && [ "$c" -gt "$1" ]; }

# The save files (up to the domU's 128 MiB each) in a tmpfs of their own: dom0's
# root, which holds /tmp, is a tmpfs of half its RAM, most of it taken by the
# initramfs' files. One file at a time: the checkpoint is removed once read.
files=/tmp/linux-save.files
mkdir -p "$files" && mount -t tmpfs -o size=90% linux-save "$files"
free0=$(free_kib)
at "start, $free0 KiB free"
check "create $dom" "oxl create failed" oxl create "$cfg"
check "$dom boots to its shell on 2 CPUs" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted
at booted

# The file, in its tmpfs root: 256 KiB of random bytes, its checksum.
ask_for SUM0 'head -c 262144 /dev/urandom > /root/data; echo "SUM0 $(md5sum /root/data | cut -c 1-32) END"'
sum0=$(answer SUM0)
echo "linux-save: /root/data written, md5 $sum0"
check "the file is written" "no checksum in: $(tail -n 3 $out)" [ ${#sum0} = 32 ]

# The counter, in the background on its console.
ask '(i=0; while :; do i=$((i + 1)); echo "COUNT $i"; usleep 100000; done) & echo "COUNTER started END"'
check "the counter runs" "no COUNT past 20 in 60 s" wait_for 60 counted_past 20
# Its rate before: values per 5 s of dom0's time.
c0=$(last_count); sleep 5; c1=$(last_count)
rate0=$((c1 - c0))
echo "linux-save: $rate0 counts in 5 s before the save"

# The checkpoint: written, and it runs on with its counter unbroken. Not with
# linux_save=short on dom0's command line (dom0-linux-io-vmx: under Bochs a
# save of this domU takes a minute and a half).
if [ -z "$short" ]; then
    t0=$(last_count)
    at "save -c after COUNT $t0"
    # Its pause lasts the command (--json's seconds).
    check "save -c" "oxl save -c failed" sh -c "oxl save -c --json $dom $files/checkpoint.save > /tmp/linux-save.json"
    echo "linux-save: save -c --json: $(cat /tmp/linux-save.json)"
    at "save -c done"
    check "it runs on after save -c" "no COUNT past $t0 in 10 s" wait_for 10 counted_past $((t0 + 10))
    oxl console --dump "$dom" > /tmp/linux-save.ckpt
    counts /tmp/linux-save.ckpt > /tmp/linux-save.ckptseq
    check "its counter is unbroken across the checkpoint" "see the lines above" consecutive < /tmp/linux-save.ckptseq
    echo "linux-save: checkpoint of $(stat -c %s $files/checkpoint.save) bytes; COUNT $t0 to $(tail -n 1 /tmp/linux-save.ckptseq) around it"
    rm -f "$files/checkpoint.save"
else
    echo "linux-save: linux_save=short: no checkpoint (oxl save -c) in this run"
fi

# The save proper. Paused first, so that its console as it stops is known:
# the last value before, and maybe the start of a line the restored domain
# finishes.
check "pause it" "oxl pause failed" oxl pause "$dom"
oxl console --dump "$dom" > /tmp/linux-save.before
t=$(counts /tmp/linux-save.before | tail -n 1)
id1=$(field "$dom" 2)
at "save of the paused domain, last COUNT $t"
# --json: the summary on one line (op, domain, file, bytes, pages, seconds).
check "save" "oxl save failed" sh -c "oxl save --json $dom $files/linux.save > /tmp/linux-save.json"
echo "linux-save: save --json: $(cat /tmp/linux-save.json)"
saved_at=$(cut -d ' ' -f 1 /proc/uptime)
check "the domain is gone after save" "still listed" gone "$dom"
settled() { [ "$(free_kib)" = "$free0" ]; }
check "memory back to the byte after save" "$free0 KiB before, $(free_kib) KiB now" wait_for 30 settled
echo "linux-save: file of $(stat -c %s $files/linux.save) bytes"

# Restore: the same name, a new ID, it runs on.
sleep 2
check "restore" "oxl restore failed" sh -c "oxl restore --json $files/linux.save > /tmp/linux-save.json"
echo "linux-save: restore --json: $(cat /tmp/linux-save.json)"
at restored
echo "linux-save: $(awk -v s="$saved_at" '{ printf "%.2f", $1 - s }' /proc/uptime) s between the end of the save and the end of the restore"
id2=$(field "$dom" 2)
new_id() { [ -n "$id2" ] && [ "$id2" != "$id1" ]; }
check "restored as $dom with a new ID" "id $id2 (was $id1)" new_id
check "its counter goes on" "no COUNT past $t in 20 s" wait_for 20 counted_past $((t + 5))
oxl console --dump "$dom" > /tmp/linux-save.after
f=$(counts /tmp/linux-save.after | head -n 1)
echo "linux-save: last COUNT before the save $t; the restored ring starts:"
head -c 200 /tmp/linux-save.after | tr -d '\r' | head -n 3
# The saved ring's end and the restored ring, as one console.
cat /tmp/linux-save.before /tmp/linux-save.after > /tmp/linux-save.joined
counts /tmp/linux-save.joined > /tmp/linux-save.seq
echo "linux-save: around the save: $(awk -v t="$t" '$1 >= t - 2 && $1 <= t + 3' /tmp/linux-save.seq | tr '\n' ' ')"
check "its counter goes on with $((t + 1)) after $t, none repeated or skipped" "see the lines above" consecutive < /tmp/linux-save.seq
next_is() { grep -qx "$((t + 1))" /tmp/linux-save.seq; }
check "the value after the save's last is there" "no COUNT $((t + 1))" next_is

# Its timers fire at their rate: counts per 5 s within a third of before's.
c0=$(last_count); sleep 5; c1=$(last_count)
rate1=$((c1 - c0))
echo "linux-save: $rate1 counts in 5 s after the restore ($rate0 before)"
same_rate() { [ "$rate1" -gt 0 ] && [ $((rate1 * 3)) -ge $((rate0 * 2)) ] && [ $((rate1 * 3)) -le $((rate0 * 4)) ]; }
check "its counter runs at its rate after the restore (within a third)" "$rate1 against $rate0" same_rate

# The file, the shell, the clock.
ask_for SUM1 'echo "SUM1 $(md5sum /root/data | cut -c 1-32) END"'
sum1=$(answer SUM1)
check "the shell answers after the restore" "no answer in: $(tail -n 3 $out)" [ -n "$sum1" ]
check "the file written before the save reads back the same" "md5 $sum1, was $sum0" [ "$sum1" = "$sum0" ]
h0=$(date +%s)
ask_for EPOCH 'echo "EPOCH $(date +%s) END"'
d=$(answer EPOCH); h1=$(date +%s)
echo "linux-save: domU date $d, dom0 date $h0 before asking, $h1 after"
# Read between dom0's two readings (the answer comes back after oxl's
# linger), give or take 2 s of rounding and typing.
clock_right() { [ -n "$d" ] && [ "$d" -ge $((h0 - 2)) ] && [ "$d" -le $((h1 + 2)) ]; }
check "its clock is dom0's after the restore" "domU $d, dom0 $h0..$h1" clock_right
ask 'kill %1; echo "COUNTER stopped END"'

check "destroy it" "oxl destroy failed" oxl destroy "$dom"
check "it is gone" "still listed after 30 s" wait_for 30 gone "$dom"
check "memory back to the byte at the end" "$free0 KiB before, $(free_kib) KiB now" wait_for 30 settled
rm -f "$files/linux.save"; umount "$files"
at done
echo "linux-save: done, $failed failed"
