#!/usr/bin/env bash
# Profile of the one-GPU decode and the speed levers against diffusers (issue 12, target 1), then the notebook
# tests on this GPU. Run through the device tool (its $OUT comes back), carrying .gpuwhl:
#   CONFIGS=qwen-image:2048x2048,wan2.1:720x1280x21 bash benchmarks/gpu_profile.sh
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out"
if [ -d .gpuwhl ] && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpuwhl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD MPLBACKEND=Agg PYTHONUNBUFFERED=1
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
timeout ${PROFILE_TIMEOUT_S:-420} python3 benchmarks/profile_decode.py --configs "${CONFIGS:?}" \
  --variants "${VARIANTS:-diffusers,full,optimized:causal_conv,optimized:channels_last+causal_conv,optimized:channels_last+causal_conv+compile,diffusers_tiled,tiled}" \
  --repeats "${REPEATS:-2}" --out "$out/profile_decode_${gpu}.json" 2>&1 | grep -v Warning | tail -80
if [ -n "${NOTEBOOKS:-}" ]; then
  python3 -m ipykernel install --user --name python3 >/dev/null 2>&1
  WORKBENCH_TEST_DEVICE=cuda timeout ${NOTEBOOK_TIMEOUT_S:-240} python3 -m pytest -v -p no:cacheprovider tests/test_notebooks.py \
    tests/test_pipeline_notebook.py 2>&1 | tee "$out/gpu_notebooks_1gpu.log" | tail -15
fi
