#!/usr/bin/env bash
# The full Qwen-Image decode at 8192x8192 on one GPU (expected: out of memory; recorded as such).
set -u
out=${OUT:-data/bench}
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
timeout 90 python3 -m workbench bench --configs qwen-image:8192x8192 --modes full --repeats 1 --warmup 0 \
  --no-reference --out "$out/decode_${gpu}_sp1_8192.json"
