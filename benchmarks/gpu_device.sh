#!/usr/bin/env bash
# One session on a lent GPU machine, as one prepared command (device time is scarce):
#   1. the CUDA tests of the captured training step (tests/library/test_train_step.py);
#   2. the captured step against the eager one at batch 64 (benchmarks/bench_capture.py);
#   3. the time-boxed paper run with early stopping, paper/gpu.py (library only: the machine has
#      no Ray or MLflow), with every step replayed from a CUDA graph when 1 passed and 2 ran.
# Everything lands in one tarball under $1 so that it comes back as one file.
#   usage: bash benchmarks/gpu_device.sh OUT_DIR [BUDGET_S] [DEVICE]
# The machine has torch, numpy, scikit-learn, matplotlib and pytest, not this repo's data folder:
# MISSIWAE_DATA_DIR must point at a copy holding binarized_mnist/ (carried with the tree).
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

log "tests of the captured step"
# --noconftest: the suite's conftest sets up Ray, which this machine does not have.
timeout 180 python3 -m pytest -q -p no:cacheprovider --noconftest -o addopts="" -rs \
  tests/library/test_train_step.py >"$work/test_train_step.txt" 2>&1
tests_rc=$?
log "bench_capture (tests rc $tests_rc)"
timeout 150 python3 -m benchmarks.bench_capture --steps 500 --reps 3 \
  --out "$work/capture_cuda.json" >"$work/bench_capture.txt" 2>&1
log "bench_capture rc $?"
graph=""
if [ "$tests_rc" = 0 ] && [ -f "$work/capture_cuda.json" ] && [ "$device" = cuda ]; then graph="--cuda-graph"; fi
log "report run ${graph:-(eager steps)}"
python3 -m paper.gpu run --out "$work/report_gpu" --budget-s "$budget" --device "$device" $graph \
  >"$work/report_gpu.txt" 2>&1
log "done (rc $?)"
cat "$work/test_train_step.txt" "$work/bench_capture.txt" "$work/report_gpu.txt"
cp "$work/session.log" "$out/session.log"
tar -czf "$out/gpu_session.tar.gz" -C "$work" .
ls -la "$out"
