#!/usr/bin/env bash
# One call of the `device` tool for issue 17 (a lent GPU machine: Python with CUDA PyTorch, Lightning, scipy,
# no ASE, no qm9pack, no network). Prepare here first:
#     .venv/bin/python benchmarks/make_qm9_compact.py --out .gpu/qm9_homo.npz     # 26 MiB, carried as ".gpu"
# then run on the device, e.g. with timeout_s=540 and carry [".gpu"]:
#     BUDGET_MIN=5.5 bash benchmarks/gpu_session.sh
# It runs the CUDA tests, then benchmarks/gpu.py's QM9 HOMO budget training with the data kept on the GPU
# (data_on_device) at the settings of the 2026-11-27 loader run (7 × 128, batch 384, lr 2e-3, TF32), so the two
# end-to-end rates compare; the table's cell (7 × 128, batch 1,024, TF32) is measured eager and through torch.compile
# side by side. TRAIN_COMPILE=1 trains with compile=true too (a second reading; compare with a run without it).
# Everything it prints is also written under $OUT (the device tool brings it back).
set -euo pipefail
OUT=${OUT:-runs/gpu-session}
BUDGET_MIN=${BUDGET_MIN:-5.5}
TRAIN_COMPILE=${TRAIN_COMPILE:-0}
EXTRA=()
[ "$TRAIN_COMPILE" = 1 ] && EXTRA+=(--train-compile)
mkdir -p "$OUT"
export PYTHONPATH=src  # no install: the machine's torch stays, and pairreg's ASE-free paths are all this needs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m cuda tests/test_gpu.py tests/test_resident.py 2>&1 | tail -5 | tee "$OUT/cuda_tests.txt"
python3 benchmarks/gpu.py --qm9-npz .gpu/qm9_homo.npz --layers 7 --batches 1024 --precisions tf32 --compile --steps 5 \
    --budget-min "$BUDGET_MIN" --train-batch 384 --train-lr 2e-3 --train-precision tf32 --data-on-device "${EXTRA[@]}" \
    --out "$OUT/runs" --json "$OUT/gpu_data_on_device.json" 2>&1 | tee "$OUT/gpu_data_on_device.txt"
