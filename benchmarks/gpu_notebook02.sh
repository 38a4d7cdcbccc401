#!/usr/bin/env bash
# Notebook 02 on CUDA, three runs at once under papermill (what the tests run, as a loaded host sees it),
# each watched by gpu_notebook_watch.sh; everything comes back in $OUT/notebook02.tgz. On a 4-GPU machine.
set -uo pipefail
source benchmarks/gpu_env.sh  # installs the wheels once, before the three runs start
w=benchmarks/gpu_notebook_watch.sh
p="-p model qwen-image -p size 64x64 -p tile_px 32 -p stride_px 24 -p device cuda -p strategies full,tiled,shard"
CUDA_VISIBLE_DEVICES=0,1 bash $w sweep12 02_strategies.ipynb $p -p world_size 2 -p sweep "SP degree" -r sweep_values 1,2 &
CUDA_VISIBLE_DEVICES=2 bash $w sweep1 02_strategies.ipynb $p -p world_size 1 -p sweep "SP degree" -r sweep_values 1 &
CUDA_VISIBLE_DEVICES=3,2 bash $w headless2 02_strategies.ipynb -p model glm-image -p size 64x96 -p tile_px 32 \
  -p stride_px 24 -p device cuda -p world_size 2 &
wait
tar czf "$out/notebook02.tgz" -C "$out" --exclude notebook02.tgz . && find "$out" -type f ! -name notebook02.tgz -delete
