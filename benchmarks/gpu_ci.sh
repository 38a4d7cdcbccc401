#!/usr/bin/env bash
# The test suite and the notebooks on CUDA, through the device tool (its $OUT comes back):
#   bash benchmarks/gpu_ci.sh 1    one GPU: every test on cuda:0 (pools of more ranks than GPUs are skipped)
#   bash benchmarks/gpu_ci.sh 4    four GPUs: the same suite, multi-rank tests on NCCL
#   TESTS="tests/test_notebooks.py -k sweep" bash benchmarks/gpu_ci.sh 1    a part of it
# $out/gpu_tests_<N>gpu_trace.log gets each test's start, outcome, duration and failure as it happens, so a
# call cut by its time limit still says what ran and why a test failed.
# PYTEST_WORKERS=N runs the test files in N pytest-xdist processes (--dist loadfile: a file's tests stay
# together), so the 4-GPU suite fits one device call; pools keep their own file stores, so they do not meet.
set -uo pipefail
gpus=${1:-1}
out=${OUT:-/tmp/out}; mkdir -p "$out"
source benchmarks/gpu_env.sh
export WORKBENCH_TEST_DEVICE=cuda
python3 -m ipykernel install --user --name python3 >/dev/null 2>&1
log="$out/gpu_tests_${gpus}gpu.log"
export WORKBENCH_TEST_TRACE="$out/gpu_tests_${gpus}gpu_trace.log"
xdist=${PYTEST_WORKERS:+-n $PYTEST_WORKERS --dist loadfile}
{
  echo "# command: WORKBENCH_TEST_DEVICE=cuda python3 -m pytest -v -rs $xdist ${TESTS:-tests}  (on $gpus GPU(s))"
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import sys, torch, diffusers, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
} > "$log" 2>&1
timeout ${SUITE_TIMEOUT_S:-480} python3 -m pytest -v -rs -p no:cacheprovider --timeout 300 $xdist --durations 15 ${TESTS:-tests} 2>&1 | tee -a "$log" | tail -40
