#!/usr/bin/env bash
# Our tiled decode against diffusers' enable_tiling() on one GPU, one launch per preset (issue 12, target 4):
# time, peak and PSNR vs float32 of each variant. Through the device tool, carrying .gpuwhl ($OUT comes back):
#   bash benchmarks/gpu_tiled.sh                 every preset
#   PRESETS="glm-image" bash benchmarks/gpu_tiled.sh    some of them
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/gpu_env.sh
gpu=$(gpu_name)
L=causal_conv+fused_norm
run() {  # config variants
  [[ " ${PRESETS:-qwen-image glm-image wan2.1 wan2.2-ti2v-5b} " == *" ${1%%:*} "* ]] || return 0
  timeout ${TILED_TIMEOUT_S:-200} python3 benchmarks/profile_decode.py --configs "$1" --variants "$2" --repeats 2 \
    --out "$out/decode_tiled_${1%%:*}_${gpu}.json" 2>&1 | grep -v Warn | tail -12
}
run qwen-image:2048x2048 "diffusers,diffusers_tiled,tiled,tiled:$L,tiled:$L@tile_batch=8,tiled:$L@tile_batch=32"
G="tiled:$L@tile_px=1024;stride_px=768"  # mid_block: global (auto, the default for image decoders) or tile
run glm-image:2048x2048 "diffusers,diffusers_tiled,$G,$G;mid_block=tile,$G;global_up_blocks=1,$G;global_up_blocks=2,$G;global_up_blocks=3,$G;tile_batch=3,tiled:$L@tile_px=512;stride_px=384;tile_batch=4,tiled:$L@tile_px=512;stride_px=384;tile_batch=4;mid_block=tile,tiled:$L@tile_px=512;stride_px=448;tile_batch=4"
run wan2.1:720x1280x81 "diffusers_tiled,tiled:channels_last+$L,tiled:channels_last+$L@tile_batch=4,tiled:channels_last+$L@tile_batch=7"
run wan2.2-ti2v-5b:704x1280x121 "diffusers_tiled,tiled:channels_last+$L,tiled:channels_last+$L@tile_batch=4"
