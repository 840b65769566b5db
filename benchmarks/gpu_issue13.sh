#!/usr/bin/env bash
# Issue 13's GPU figures in one run, for a session that is lent a GPU:
#
#     bash benchmarks/gpu_issue13.sh [OUT_DIR]        # OUT_DIR: default $OUT, else docs/results
#
# One training step of every learner under bf16 autocast, fast and plain paths and the official schedule's two
# phases (step time, images per second, peak GPU memory, the DAPT-over-base ratios), then one /compare's stages
# on the GPU. Each writes its JSON line into OUT_DIR. A machine without the project's packages needs them first
# (open_clip_torch with ftfy and wcwidth, grad-cam with ttach, segment-anything); it refuses to run without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-docs/results}}"
mkdir -p "$out"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU here: this script measures on one')"
python3 benchmarks/bench_train.py --device cuda --repeats 20 --out "$out/bench_train_cuda.json"
python3 benchmarks/bench_compare_stages.py --device cuda --reps 10 | tail -n 1 > "$out/bench_app_stages_cuda.json"
