#!/usr/bin/env bash
# Pipeline (DiT step at SP 1/2/4) and fused-modulation kernels on a 4-GPU machine, inside one 10-minute
# call: SP=4 on all GPUs first, then SP=1, SP=2 and the one-GPU jobs side by side on disjoint GPUs.
# Every benchmark writes its JSON after each row, so a step stopped at its limit keeps what it measured;
# logs go to /tmp (only JSON belongs in the output folder).
#   bash benchmarks/gpu_pipeline.sh
set -u
out=${OUT:-data/bench}
mkdir -p "$out"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().split()[-1].lower())")
sp() {  # sp LIMIT_S GPUS N PORT ARGS...
  local limit=$1 gpus=$2 n=$3 port=$4; shift 4
  CUDA_VISIBLE_DEVICES=$gpus timeout "$limit" python3 -m torch.distributed.run --nproc-per-node "$n" \
    --master-port "$port" benchmarks/bench_pipeline.py --out "$out" --steps 3 --warmup 1 "$@" > "/tmp/log_sp$n.txt" 2>&1 \
    || echo "SP=$n stopped (limit ${limit}s or error)"
  grep -v "^W1" "/tmp/log_sp$n.txt" | tail -12
}
one_gpu() {  # the 8192 full decode (expected OOM), then the kernel and model-step benchmarks
  export CUDA_VISIBLE_DEVICES=3
  timeout 80 python3 -m workbench bench --configs qwen-image:8192x8192 --modes full --repeats 1 --warmup 0 \
    --no-reference --out "$out/decode_${gpu}_sp1_8192.json" > /tmp/log_oom.txt 2>&1; tail -3 /tmp/log_oom.txt
  timeout 100 python3 benchmarks/bench_modulation.py --skip-model --out "$out/modulation_${gpu}_kernels.json" \
    > /tmp/log_kernels.txt 2>&1; tail -14 /tmp/log_kernels.txt
  timeout 80 python3 benchmarks/bench_modulation.py --skip-kernels --out "$out/modulation_${gpu}_model.json" \
    > /tmp/log_model.txt 2>&1; tail -6 /tmp/log_model.txt
}
sp 260 0,1,2,3 4 29601
sp 270 0 1 29602 &
sp 270 1,2 2 29603 --variants eager,eager+fused &
one_gpu &
wait
