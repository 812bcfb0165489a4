#!/bin/sh
# Devices declared for a domU and its interrupt lines (issue 11, ABI 1.6), run
# in dom0 by the system test `dom0-devices-svm`:
# - a Linux domU created with one disk by `oxl create --declare-devices`
#   (DEVICE_ADD before BUILD; no device model serves it, so virtio_mmio,
#   which the domU loads, finds no device there and binds nothing) has an ACPI
#   device LNRO0005:00 at the memory range and on the line the hypervisor
#   gave (what oxl printed and the hypervisor logged);
# - IRQ_LINE refuses a line that is not a declared device's: the UART's (4),
#   one past the IOAPIC (24), an undeclared one (17), and anything for dom0;
# - the irq test guest (tests/guests/irq) takes its device's line: a raised
#   level line is taken again while it stays up and not once it is lowered; on
#   an edge-programmed pin each raise is one interrupt.
# Prints "check: NAME: ok|FAILED (why)" (lib.sh) and "devices: done, N failed".
# `devices_test=short` on dom0's command line (the Bochs test, where a Linux
# boot takes minutes): only the irq guest's part.
. "$(dirname "$0")/lib.sh"
boot_s=${1:-600}
out=/tmp/devices.out
free0=$(free_kib)
settled() { [ "$(free_kib)" = "$free0" ]; }
short=
case " $(cat /proc/cmdline) " in *" devices_test=short "*) short=1 ;; esac

linux_part() {

# --- A Linux domU with one declared disk.
cfg=/tmp/devices-linux.cfg
{ cat "$(linux_cfg)"; echo "disk = ['/tmp/devices-disk.img,raw,xvda,rw']"; } > "$cfg"
oxl create --declare-devices "$cfg" > /tmp/create.out 2>&1
cat /tmp/create.out
# "xvda: virtio-mmio at 0xfeb00000 (4096 bytes), GSI 16 (declared only: ...)"
base=$(sed -n 's/^xvda: virtio-mmio at \(0x[0-9a-f]*\) (\([0-9]*\) bytes), GSI \([0-9]*\) .*/\1/p' /tmp/create.out)
size=$(sed -n 's/^xvda: virtio-mmio at \(0x[0-9a-f]*\) (\([0-9]*\) bytes), GSI \([0-9]*\) .*/\2/p' /tmp/create.out)
gsi=$(sed -n 's/^xvda: virtio-mmio at \(0x[0-9a-f]*\) (\([0-9]*\) bytes), GSI \([0-9]*\) .*/\3/p' /tmp/create.out)
check "create --declare-devices places xvda" "oxl said: $(cat /tmp/create.out)" [ -n "$base" -a -n "$size" -a -n "$gsi" ]
size_hex=$(printf '0x%x' "$size")
check "the hypervisor logged the same place" "no 'virtio-mmio device 0 at $base+$size_hex, GSI $gsi' in its log" \
    sh -c "oxl dmesg | grep -q 'd[0-9]* (linux): virtio-mmio device 0 at $base+$size_hex, GSI $gsi\$'"

ask() { printf '%s\n' "$1" | oxl console linux > "$out" 2>&1; }
answer() { sed -n "s/.*$1 \([^ ]*\) END.*/\1/p" "$out" | tail -n 1; }
booted() { oxl console --dump linux 2>/dev/null | grep -q "Oxen domU: Linux .* on 2 CPU(s)" && oxl console --dump linux | tail -n 3 | grep -q 'domU:.*# '; }
check "linux boots with the device declared" "no banner and prompt in $boot_s s" wait_for "$boot_s" booted

# What Linux made of the DSDT's device: its ACPI node, the platform device's
# memory resource in /proc/iomem, and the IRQ it mapped for the GSI (the
# IOAPIC pin, level triggered as _CRS says), with no driver bound.
dev=/sys/bus/acpi/devices/LNRO0005:00
ask "echo \"HID \$(cat $dev/hid) END\"; echo \"UID \$(cat $dev/uid) END\"; echo \"APATH \$(cat $dev/path) END\""
hid=$(answer HID); uid=$(answer UID); apath=$(answer APATH)
echo "devices: LNRO0005:00: hid '$hid' uid '$uid' path '$apath'"
check "LNRO0005:00 is in the domU's ACPI namespace" "hid '$hid' uid '$uid' path '$apath'" \
    [ "$hid" = LNRO0005 -a "$uid" = 0 -a "$apath" = '\_SB_.VR00' ]
ask 'echo "IOMEM $(grep LNRO0005 /proc/iomem | tr -d " ") END"'
iomem=$(answer IOMEM)
want=$(printf '%x-%x:LNRO0005:00' "$base" $((base + size - 1)))
echo "devices: /proc/iomem: '$iomem' (want '$want')"
check "its memory range is the one the hypervisor gave" "iomem '$iomem', want '$want'" [ "$iomem" = "$want" ]
ask 'for i in /sys/kernel/irq/*; do [ "$(cat $i/hwirq 2>/dev/null)" = '"$gsi"' ] && echo "GSIIRQ $(cat $i/chip_name | tr -d " ")-$(cat $i/type) END"; done; echo "DRIVER $([ -e /sys/bus/platform/devices/LNRO0005:00/driver ] && echo bound || echo none) END"'
irq=$(answer GSIIRQ); drivers=$(answer DRIVER)
echo "devices: GSI $gsi in the domU: '$irq'; LNRO0005:00's driver: $drivers"
check "its GSI is an IOAPIC line, level triggered" "GSI $gsi: '$irq'" [ "$irq" = IO-APIC-level ]
check "no driver bound it (nothing serves it)" "a driver is bound to LNRO0005:00" [ "$drivers" = none ]

# IRQ_LINE: only the declared device's line.
refused() { ! oxl irq-line "$@" > /tmp/irq.out 2>&1 && cat /tmp/irq.out; }
check "irq-line on the UART's line (4) is refused" "it was taken" refused linux 4 1
check "irq-line on GSI 24 (past the IOAPIC) is refused" "it was taken" refused linux 24 1
check "irq-line on an undeclared line (17) is refused" "it was taken" refused linux 17 1
check "irq-line for dom0 is refused" "it was taken" refused 0 "$gsi" 1
check "the hypervisor refused them" "no refusal in its log" \
    sh -c "oxl dmesg | grep -q 'irq line 4: not a line of a device it was given' && oxl dmesg | grep -q 'irq line 17: not a line of a device it was given'"
check "irq-line on its device's line is taken" "$(cat /tmp/irq.out)" oxl irq-line linux "$gsi" 1
oxl irq-line linux "$gsi" 0
ask 'echo "STILL $((6*7)) END"'
check "linux runs on" "no answer: $(tail -n 3 $out)" [ "$(answer STILL)" = 42 ]
oxl destroy linux
wait_for 30 settled
}
[ -n "$short" ] || linux_part

# --- The irq guest: what a raised line does inside a domU.
count() { oxl console --dump irq | sed -n 's/.*irq: \([0-9]*\) interrupts.*/\1/p' | tail -n 1; }
ready() { oxl console --dump irq 2>/dev/null | grep -q "irq: domain .* ready"; }
# run_irq TRIGGER: creates the guest with trigger=TRIGGER and waits until it is ready.
run_irq() {
    { cat /etc/oxen/irq.cfg; echo "extra = \"trigger=$1\""; } > /tmp/irq.cfg
    oxl create --declare-devices /tmp/irq.cfg && wait_for 60 ready
}
check "irq guest up (level)" "not ready: $(oxl console --dump irq | tail -n 2)" run_irq level
oxl console --dump irq | tail -n 1
c0=$(count)
oxl irq-line irq 16 1; sleep 2
c1=$(count)
oxl irq-line irq 16 0; sleep 1
c2=$(count); sleep 2
c3=$(count)
echo "devices: level: none before ('$c0'); $c1 after 2 s up; $c2 just after lowering; $c3 2 s later"
check "a raised line reaches the guest" "before '$c0', after '$c1'" [ -z "$c0" -a "${c1:-0}" -ge 1 ]
check "held up, the level line is taken again" "$c1 interrupts in 2 s" [ "${c1:-0}" -ge 3 ]
check "lowered, it is not" "$c2 then $c3" [ -n "$c2" -a "$c2" = "$c3" ]
oxl destroy irq
wait_for 30 settled

check "irq guest up (edge)" "not ready: $(oxl console --dump irq | tail -n 2)" run_irq edge
for i in 1 2 3; do oxl irq-line irq 16 1; oxl irq-line irq 16 1; oxl irq-line irq 16 0; sleep 1; done
sleep 1
e=$(count)
echo "devices: edge: $e interrupts for 3 raises (each line raised twice before lowering)"
check "each rising edge is one interrupt" "$e interrupts for 3 edges" [ "$e" = 3 ]
oxl destroy irq
check "memory back" "$(free_kib) KiB free, $free0 before" wait_for 30 settled
echo "devices: done, $failed failed"
