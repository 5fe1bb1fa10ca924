#!/usr/bin/env bash
# benchmarks/coverage.py on a lent GPU machine (16 cores, one GPU, no Ray), time-boxed:
#   1. replication 0 of every setting with missIWAE on the CPU, then replication 1 on the GPU,
#      each timed: the faster device runs the rest (the replications count either way: the
#      device is not one of the settings that decide the numbers);
#   2. replications 2, 3, ... replication-major (every setting about as far along) until
#      BUDGET_S seconds after the start, 16 at a time;
#   3. the summary of whatever is on disk (--summary-only), and a tarball of every replication.
#   usage: bash benchmarks/coverage_device.sh OUT_DIR [BUDGET_S] [coverage.py arguments...]
set -u
out=${1:?usage: coverage_device.sh OUT_DIR [BUDGET_S] [ARGS...]}
budget=${2:-420}
shift 2
work=$(mktemp -d)
runs="$work/coverage"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD OMP_NUM_THREADS=1
mkdir -p "$out"
start=$(date +%s)
log() { echo "[$(date +%T)] $*" | tee -a "$work/session.log"; }
run() { python3 benchmarks/coverage.py "$@" --jobs 16 --out "$runs" >>"$work/coverage.log" 2>&1; }

log "start; budget ${budget}s; arguments: $*"
python3 -c "import os; print(len(os.sched_getaffinity(0)), \"cores\")" | tee -a "$work/session.log"  # nproc obeys OMP_NUM_THREADS
t0=$(date +%s); run "$@" --replications 1 --device cpu; cpu_rc=$?; t1=$(date +%s)
run "$@" --replications 2 --device cuda; cuda_rc=$?; t2=$(date +%s)
log "replication 0 on cpu: rc $cpu_rc, $((t1 - t0)) s; replication 1 on cuda: rc $cuda_rc, $((t2 - t1)) s"
device=cpu
if [ "$cuda_rc" = 0 ] && [ $((t2 - t1)) -lt $((t1 - t0)) ]; then device=cuda; fi
left=$((budget - ($(date +%s) - start)))
log "the rest on $device for ${left} s"
if [ "$left" -gt 10 ]; then timeout "$left" python3 benchmarks/coverage.py "$@" --replications 200 \
  --device "$device" --jobs 16 --out "$runs" >>"$work/coverage.log" 2>&1; fi
log "stopped (rc $?)"
python3 benchmarks/coverage.py "$@" --replications 200 --out "$runs" --summary-only >"$out/summary.txt" 2>&1
cat "$out/summary.txt"
cp "$work/session.log" "$work/coverage.log" "$out/"
tar -czf "$out/coverage_runs.tar.gz" -C "$work" coverage
ls -la "$out"
