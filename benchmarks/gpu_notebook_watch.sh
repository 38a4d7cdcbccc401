#!/usr/bin/env bash
# One notebook under papermill on CUDA, watched: the panel's phases (timestamped) and, if it is still running
# after WATCH_S seconds, py-spy stacks of the kernel and every process under it. Through the device tool:
#   bash benchmarks/gpu_notebook_watch.sh NAME NOTEBOOK [papermill -p options...]
#   bash benchmarks/gpu_notebook_watch.sh sweep1 02_strategies.ipynb -p model qwen-image -p size 64x64 -p world_size 1 \
#        -p sweep "SP degree" -p sweep_values 1 -p device cuda
set -uo pipefail
source benchmarks/gpu_env.sh
python3 -m ipykernel install --user --name python3 >/dev/null 2>&1
name=$1 notebook=$2; shift 2
export WORKBENCH_PROGRESS_LOG=$out/progress_$name.log
t0=$(date +%s)
timeout ${NOTEBOOK_TIMEOUT_S:-240} python3 -m workbench.runtime.papermill_engine "notebooks/$notebook" "$out/$name.ipynb" "$@" \
  -k python3 --engine ${ENGINE:-workbench} --log-output \
  --execution-timeout ${CELL_TIMEOUT_S:-170} --cwd /tmp > "$out/papermill_$name.log" 2>&1 &
pm=$!
while kill -0 $pm 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt ${WATCH_S:-90} ]; do sleep 2; done
if kill -0 $pm 2>/dev/null; then
  { echo "# still running after ${WATCH_S:-90} s: py-spy dump of every process under papermill"
    for pid in $(pgrep -f ipykernel_launcher) $(pgrep -f "multiprocessing.spawn"); do
      echo "## pid $pid: $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-160)"
      py-spy dump --pid "$pid" --native 2>&1 || py-spy dump --pid "$pid" 2>&1
    done
    nvidia-smi
  } > "$out/stacks_$name.txt" 2>&1
fi
wait $pm; rc=$?
echo "$name: papermill exit $rc after $(( $(date +%s) - t0 )) s"
cat "$out/progress_$name.log" 2>/dev/null
