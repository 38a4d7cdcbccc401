#!/usr/bin/env bash
# Train the three tiny VAE families at once, one GPU each, through the device tool (its $OUT comes back):
#   bash benchmarks/gpu_train.sh SECONDS GPU_WAN GPU_WAN22 GPU_GLM     (background; `wait` for them)
# Weights, cards, pictures and logs land in $OUT/weights. diffusers comes from .gpuwhl/ (see gpu_ci.sh).
set -uo pipefail
seconds=${1:-480}
out=${OUT:-/tmp/out}/weights; mkdir -p "$out"
if [ -d .gpuwhl ] && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpuwhl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
gpu=(0 "${2:-0}" "${3:-1}" "${4:-2}")
i=1
for family in wan wan22 glm; do
  CUDA_VISIBLE_DEVICES=${gpu[$i]} python3 -m workbench.models.train --family $family --seconds "$seconds" \
    --out "$out" > "$out/$family.log" 2>&1 &
  i=$((i + 1))
done
