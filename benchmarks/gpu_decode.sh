#!/usr/bin/env bash
# Decode strategies on 1, 2 and 4 GPUs (real configs, bf16, random weights): the issue-3 table.
# Run from the repo root on a machine with 4 GPUs; JSON goes to ${OUT:-data/bench}. Steps are ordered
# by importance and each has a time limit, so a slow step cannot take the later ones with it.
#   bash benchmarks/gpu_decode.sh
set -u
out=${OUT:-data/bench}
mkdir -p "$out"
source benchmarks/gpu_env.sh  # the wheels, PYTHONPATH, gpu_name
gpu=$(gpu_name)
port=29500
run() {
  local limit=$1 n=$2; shift 2; port=$((port + 1))
  echo "== $n GPU(s): $*"
  timeout "$limit" python3 -m torch.distributed.run --nproc-per-node "$n" --master-port "$port" -m workbench bench "$@" \
    || echo "step failed or timed out: $n GPU(s) $*"
}
images="qwen-image:2048x2048,qwen-image:4096x4096"
videos="wan2.1:480x832x81,wan2.1:720x1280x81"
run 150 4 --configs "$images,$videos" --modes parallel_tiled,patch,shard --repeats 3 --out "$out/decode_${gpu}_sp4.json"
run 180 1 --configs "$images,$videos" --modes full,tiled --repeats 2 --out "$out/decode_${gpu}_sp1.json"
run 150 2 --configs "$images,$videos" --modes parallel_tiled,patch,shard --repeats 3 --out "$out/decode_${gpu}_sp2.json"
run 90 4 --configs qwen-image:8192x8192 --modes shard --repeats 2 --no-reference --out "$out/decode_${gpu}_sp4_8192.json"
# One GPU running out of memory at 8192x8192 is shown by benchmarks/gpu_decode_oom.sh (a separate call).
