#!/usr/bin/env bash
# The cost model against allocator peaks: every strategy on every preset at two sizes, real configs, bf16,
# on 4 GPUs (serial modes on rank 0). Writes $OUT/$NAME.json (default decode_memory_h200_sp4; tests/test_cost.py
# reads every data/bench/decode_memory_*.json, the newest record of each configuration counting). CONFIGS=...
# re-measures some configurations only. Run through the device tool on nvidia-h200-x4.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/gpu_env.sh
name=${NAME:-decode_memory_h200_sp4}
configs=qwen-image:1024x1024,qwen-image:2048x2048,qwen-image-edit:1024x1024,qwen-image-edit:1536x1536
configs=$configs,glm-image:1024x1024,glm-image:2048x2048,wan2.1:480x832x17,wan2.1:720x1280x17
configs=$configs,wan2.2-a14b:480x832x17,wan2.2-a14b:720x1280x17,wan2.2-ti2v-5b:480x832x17,wan2.2-ti2v-5b:704x1280x21
configs=${CONFIGS:-$configs}
timeout ${BENCH_TIMEOUT_S:-540} torchrun --nproc-per-node ${GPUS:-4} -m workbench bench --configs $configs \
  --modes full,tiled,parallel_tiled,patch,shard --repeats 1 --warmup 1 --dtype bfloat16 \
  --out "$out/$name.json" 2>&1 | tee "$out/$name.log" | grep -v Warning | tail -80
