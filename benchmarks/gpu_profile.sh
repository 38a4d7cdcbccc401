#!/usr/bin/env bash
# The one-GPU decode against diffusers in one launch (issue 12, targets 1 and 4): every variant's time, peak and
# PSNR vs float32, torch.profiler breakdowns, and the fused-norm kernel benchmark. Through the device tool,
# carrying .gpuwhl ($OUT comes back):
#   bash benchmarks/gpu_profile.sh images    qwen-image and glm-image at 2048x2048, and the kernel benchmark
#   bash benchmarks/gpu_profile.sh videos    wan2.1 720x1280x81 and wan2.2-ti2v-5b 704x1280x121
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/gpu_env.sh
gpu=$(gpu_name)
best=causal_conv+fused_norm
tiled="diffusers_tiled,tiled,tiled:$best"
case ${1:?images or videos} in
  images)
    timeout 150 python3 benchmarks/bench_vae_norm.py --out "$out/vae_norm_${gpu}.json" 2>&1 | tail -12
    configs=qwen-image:2048x2048,glm-image:2048x2048
    variants="diffusers,full,full:causal_conv,full:$best,full:channels_last+$best,full:$best+compile,full:channels_last+$best+compile,$tiled" ;;
  videos)
    configs=wan2.1:720x1280x81,wan2.2-ti2v-5b:704x1280x121
    variants="diffusers,full:$best,full:channels_last+$best,$tiled" ;;
esac
timeout ${PROFILE_TIMEOUT_S:-420} python3 benchmarks/profile_decode.py --configs "$configs" --variants "$variants" \
  --profile "diffusers,full:$best" --repeats 2 --out "$out/decode_1gpu_$1_${gpu}.json" 2>&1 | grep -v Warn | tail -40
