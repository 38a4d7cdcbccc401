# Sourced by every benchmarks/gpu_*.sh: the wheels missing on the GPU image (diffusers, papermill, the
# notebook kernel, py-spy), carried in .gpuwhl/, installed once per machine into /tmp/site; the paths.
if [ -d .gpuwhl ] && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpuwhl/*.whl
fi
if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH; else export PYTHONPATH=$PWD; fi
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
out=${out:-${OUT:-/tmp/out}}; mkdir -p "$out"  # a script may have chosen its own
# The card's short name for file names: h100, h200 ("NVIDIA H100 80GB HBM3" -> h100).
gpu_name() { python3 -c "import re, torch; n = torch.cuda.get_device_name(); m = re.search(r'\b[A-Z]\d{3}\b', n); print((m.group(0) if m else n.split()[-1]).lower())"; }
