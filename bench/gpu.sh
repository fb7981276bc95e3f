#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one go on a machine with CUDA:
#   bash bench/gpu.sh            (TADA-1B shapes, random weights, bf16; about 10 minutes on an H100)
# Writes JSON (and PNG with matplotlib) to bench/results/: eager and compiled single-stream runs
# (TTFA short/medium/long, per-token time, RTF, streaming vs non-streaming, peak VRAM of both);
# the codec's decode phase alone, batched across 1/8/32/64 streams against one by one; then
# 1/8/32 concurrent streams on one compiled engine (aggregate throughput, p95 TTFA, seconds per
# tick by phase, decode included). The concurrent run is in-process (--in-process): a GPU box
# rarely has the server's packages; drop the flag to go through `tadastream serve` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench/gpu.sh needs a CUDA GPU")'
python bench/bench_streaming.py --mode 1b --dtype bf16 --device cuda --gen-repeat 3 --mem --plot
python bench/bench_streaming.py --mode 1b --dtype bf16 --device cuda --gen-repeat 3 --mem --plot --compile
python bench/bench_decode_batch.py --dtype bf16 --device cuda --streams 1,8,32,64
python bench/bench_concurrency.py --mode 1b --dtype bf16 --device cuda --levels 1,8,32 --compile --in-process --plot
