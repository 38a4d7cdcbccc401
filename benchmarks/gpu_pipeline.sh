#!/usr/bin/env bash
# Issue 13 on a 4-GPU machine in one 10-minute call: the DiT step at SP=4 (qwen-image 1024x1024, wan2.1
# 480x832x81; eager and compiled, with and without the fused modulation ops, each profiled once, and compiled
# with CUDA graphs), then qwen-image 2048x2048 at SP=4 and at SP=1, then CUDA graphs at SP=1 for the default sizes. The committed JSON is copied into the output folder
# first, so rows this call does not measure again (SP=1 at the default sizes) are kept.
# Every benchmark writes its JSON after each row, so a step stopped at its limit keeps what it measured;
# logs go to /tmp (only JSON and profiles belong in the output folder).
#   bash benchmarks/gpu_pipeline.sh          (OUT=folder; default data/bench)
set -u
out=${OUT:-data/bench}
mkdir -p "$out"
[ "$out" != data/bench ] && cp data/bench/pipeline_nvidia-h200_sp*.json "$out"/ 2>/dev/null
sp() {  # sp LIMIT_S GPUS N PORT ARGS...
  local limit=$1 gpus=$2 n=$3 port=$4; shift 4
  CUDA_VISIBLE_DEVICES=$gpus timeout "$limit" python3 -m torch.distributed.run --nproc-per-node "$n" \
    --master-port "$port" benchmarks/bench_pipeline.py --out "$out" --steps 5 --warmup 1 "$@" > "/tmp/log_sp$n.txt" 2>&1 \
    || echo "SP=$n stopped (limit ${limit}s or error)"
  grep -v "^W1" "/tmp/log_sp$n.txt" | tail -12
}
sp 260 0,1,2,3 4 29601 --profile eager,compile,eager+fused,compile+fused
sp 150 0,1,2,3 4 29602 --models qwen-image --sizes qwen-image=2048x2048 --variants eager,compile,graphs
sp 150 0 1 29603 --models qwen-image --sizes qwen-image=2048x2048 --variants eager,compile,graphs
sp 120 0 1 29604 --variants graphs
