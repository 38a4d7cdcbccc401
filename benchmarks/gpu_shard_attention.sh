#!/usr/bin/env bash
# What gathering the queries costs shard at SP=4 (issue 12: all_queries becomes the default if under 5%):
# the same bench twice, --shard-attention local_queries and all_queries, bf16, real configs, random weights.
#   bash benchmarks/gpu_shard_attention.sh        JSON to ${OUT:-data/bench}
set -u
out=${OUT:-data/bench}; mkdir -p "$out"
source benchmarks/gpu_env.sh  # the wheels, PYTHONPATH, gpu_name
gpu=$(gpu_name)
port=29600
for attention in local_queries all_queries; do
  port=$((port + 1))
  timeout 100 python3 -m torch.distributed.run --nproc-per-node 4 --master-port $port -m workbench bench \
    --configs qwen-image:2048x2048,wan2.1:720x1280x81 --modes shard --shard-attention $attention --repeats 3 \
    --no-reference --out "$out/shard_attention_${gpu}_sp4_${attention}.json" || echo "failed or timed out: $attention"
done
