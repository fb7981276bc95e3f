#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one go on a machine with CUDA:
#   bash bench/gpu.sh            (TADA-1B shapes, random weights, bf16; about 10 minutes on an H100)
# Writes JSON (and PNG with matplotlib) to bench/results/: eager and compiled single-stream runs
# (TTFA short/medium/long, per-token time, RTF, streaming vs non-streaming, peak VRAM of both),
# then 1/8/32 concurrent streams through `tadastream serve --compile` (aggregate throughput, p95 TTFA).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh needs a CUDA GPU")'
python bench/bench_streaming.py --mode 1b --dtype bf16 --device cuda --gen-repeat 3 --mem --plot
python bench/bench_streaming.py --mode 1b --dtype bf16 --device cuda --gen-repeat 3 --mem --plot --compile
python bench/bench_concurrency.py --mode 1b --dtype bf16 --device cuda --levels 1,8,32 --compile --plot
