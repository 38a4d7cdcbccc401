#!/usr/bin/env bash
# Train tiny VAE families in the background, each on the GPU named beside it, through the device tool:
#   source benchmarks/gpu_train.sh SECONDS wan:0 wan22:1 glm:2; wait; tar czf $OUT/weights.tgz -C $OUT weights
# Weights, cards, pictures and logs land in $OUT/weights (the tool brings back at most 8 files: tar them).
seconds=${1:-480}; shift
wout=${OUT:-/tmp/out}/weights; mkdir -p "$wout"
source benchmarks/gpu_env.sh
for pair in "$@"; do
  CUDA_VISIBLE_DEVICES=${pair#*:} \
    python3 -m workbench.models.train --family ${pair%%:*} --seconds "$seconds" --out "$wout" \
    > "$wout/${pair%%:*}.log" 2>&1 &
done
