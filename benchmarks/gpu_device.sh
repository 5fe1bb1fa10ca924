#!/usr/bin/env bash
# One session on a lent GPU machine, as one prepared command (device time is scarce):
#   1. the GPU throughput benchmarks (bench_train, bench_impute with --device cuda);
#   2. the time-boxed paper run, paper/gpu.py (library only: the machine has no Ray).
# Everything lands in one tarball under $1 so that it comes back as one file.
#   usage: bash benchmarks/gpu_device.sh OUT_DIR [BUDGET_S] [DEVICE]
# The machine has torch, numpy, scikit-learn and matplotlib but not this repo's data folder:
# MISSIWAE_DATA_DIR must point at a copy of ../shared/data/binarized_mnist's parent.
set -u
out=${1:?usage: gpu_device.sh OUT_DIR [BUDGET_S] [DEVICE]}
budget=${2:-300}
device=${3:-cuda}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
mkdir -p "$out"
log() { echo "[$(date +%T)] $*" | tee -a "$work/session.log"; }

log "start; budget ${budget}s; device ${device}"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv >"$work/gpu.csv" 2>&1
python3 -c "import torch, sklearn, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
'sklearn', sklearn.__version__, 'numpy', numpy.__version__)" 2>&1 | tee "$work/versions.txt"

log "bench_train batch 64"
timeout 90 python3 benchmarks/bench_train.py --device "$device" --no-peer --no-before --reps 1 \
  --out "$work/train_cuda.json" >"$work/bench_train.txt" 2>&1
log "bench_train batch 1024, K=50 (rc $?)"
timeout 50 python3 benchmarks/bench_train.py --device "$device" --no-peer --no-before --reps 1 \
  --batch-size 1024 --K 50 --out "$work/train_cuda_b1024.json" >"$work/bench_train_b1024.txt" 2>&1
log "bench_impute (rc $?)"
timeout 90 python3 benchmarks/bench_impute.py --device "$device" --no-peer --no-before --reps 1 \
  --work 10000000 --out "$work/impute_cuda.json" >"$work/bench_impute.txt" 2>&1
log "report_gpu run (rc $?)"
python3 -m paper.gpu run --out "$work/report_gpu" --budget-s "$budget" --device "$device" \
  >"$work/report_gpu.txt" 2>&1
log "done (rc $?)"
tail -n 30 "$work"/bench_*.txt
cat "$work/report_gpu.txt"
cp "$work/session.log" "$out/session.log"
tar -czf "$out/gpu_session.tar.gz" -C "$work" .
ls -la "$out"
