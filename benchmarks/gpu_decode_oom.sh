#!/usr/bin/env bash
# The full Qwen-Image decode at 8192x8192 on one GPU (expected: out of memory; recorded as such).
set -u
out=${OUT:-data/bench}
source benchmarks/gpu_env.sh  # the wheels, PYTHONPATH, gpu_name
gpu=$(gpu_name)
timeout 90 python3 -m workbench bench --configs qwen-image:8192x8192 --modes full --repeats 1 --warmup 0 \
  --no-reference --out "$out/decode_${gpu}_sp1_8192.json"
