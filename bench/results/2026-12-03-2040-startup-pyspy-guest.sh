#!/bin/sh
# in the guest: where start-up time goes, record vs stats, sampled by py-spy
# (Python frames; bcc's compile shows as the ctypes call into libbcc)
set -x
PY=/work/main/.venv/bin/python
SPY=/work/main/.venv/bin/py-spy
OUT=/work/profvm/6.12/out; mkdir -p $OUT
mount | grep -q tracefs || mount -t tracefs tracefs /sys/kernel/tracing
modprobe ipvlan || true
for round in 1; do
for mode in record stats; do
  rm -f $OUT/ready
  if [ $mode = record ]; then args="record -o $OUT/r.ipvt --duration 2 --ready-file $OUT/ready"; else args="stats --duration 2 --json --ready-file $OUT/ready"; fi
  start=$(date +%s%N)
  $SPY record --nonblocking -r 20 -f raw -o $OUT/$mode-$round.txt -- $PY -m ipvtrace $args > $OUT/$mode-$round.log 2>&1
  end=$(date +%s%N)
  echo "$mode round $round: $(( (end - start) / 1000000 )) ms" >> $OUT/times.txt
done
done
