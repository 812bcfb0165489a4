#!/bin/sh
# Shared by migrate-bench.sh and migrate-bench-peer.sh (sourced after
# migrate-lib.sh): the benchmark's domU, mb, is lmig's config with 256 MiB.
lmig=mb
out=/tmp/mb.out
sed -e "s/^name = .*/name = \"$lmig\"/" -e "s/^memory = .*/memory = 256/" \
    -e "s/^extra = .*/extra = \"console=ttyS0,115200 8250.nr_uarts=1 quiet\"/" \
    "$(linux_cfg)" > /tmp/$lmig.cfg
# up: dom0's uptime in seconds (10 ms steps); since T0 T1: T1 - T0.
up() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
