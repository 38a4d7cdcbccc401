#!/usr/bin/env bash
# Issue 12, target 3 on a 4-GPU machine: exact shard decodes one GPU cannot hold, each rank writing its block,
# then assembled and checked on the host (benchmarks/beyond_memory.py). JSON to $OUT/beyond_memory_h200_sp4.json.
set -uo pipefail
source benchmarks/gpu_env.sh
timeout ${BENCH_TIMEOUT_S:-300} torchrun --nproc-per-node 4 --master-port 29631 benchmarks/beyond_memory.py \
  --configs ${CONFIGS:-qwen-image:16384x16384,wan2.1:1440x2560x81} --blocks /tmp/beyond \
  --out "$out/beyond_memory_h200_sp4.json" 2>&1 | grep -v "^W1" | grep -iv warn | tail -8
