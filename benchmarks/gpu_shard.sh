#!/usr/bin/env bash
# Issue 12, target 2 on a 4-GPU machine in one call: shard at SP=4 against diffusers' one-GPU decode (same
# launch, benchmarks/shard_vs_diffusers.py), first as it is, then with the speed levers inside each rank.
#   bash benchmarks/gpu_shard.sh [baseline] [levers]    both parts by default; JSON to ${OUT:-data/bench}
set -u
out=${OUT:-data/bench}; mkdir -p "$out"
source benchmarks/gpu_env.sh
images=${IMAGES:-qwen-image:2048x2048,glm-image:2048x2048}  # glm-image has no causal convs and a GroupNorm: no levers under shard
videos=${VIDEOS-wan2.1:720x1280x81,wan2.2-ti2v-5b:704x1280x121}
suffix=${SUFFIX:-}  # e.g. _images, for a run of some configs only
run() {  # run LIMIT_S PORT NAME ARGS...
  local limit=$1 port=$2 name=$3; shift 3
  timeout "$limit" torchrun --nproc-per-node 4 --master-port "$port" benchmarks/shard_vs_diffusers.py \
    --out "$out/$name.json" "$@" 2>&1 | grep -v "^W1" | grep -iv warn | tail -5 || echo "stopped: $name"
}
parts=" ${*:-baseline levers} "
[[ $parts == *" baseline "* ]] && run 200 29621 shard_vs_diffusers_h200_sp4$suffix --configs $images${videos:+,$videos}
[[ $parts == *" levers "* ]] || exit 0
run 120 29622 shard_causal_conv_vs_diffusers_h200_sp4$suffix --configs qwen-image:2048x2048 --levers causal_conv
run 200 29623 shard_levers_vs_diffusers_h200_sp4_rms --configs qwen-image:2048x2048,$videos --levers causal_conv,fused_norm
