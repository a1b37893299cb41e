#!/usr/bin/env bash
# One call on a 4-GPU H200 machine (nvidia-h200-x4), two lanes at once, each on its own GPUs and
# CPU cores with its own Triton cache, packed into $OUT/res.tgz (the device returns 8 files):
#   lane F, GPUs 0-2, cores  0-47: proxy fidelity at the candidate default budgets and 8x (issue 3);
#   lane K, GPU 3,    cores 48-63: the attention session (issue 6), then the linear session (issue 7).
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
RES=/tmp/res; mkdir -p $RES/fid $RES/att $RES/lin; REAL_OUT=$OUT
pack() { tar -czf $REAL_OUT/res.tgz.part -C $RES . && mv $REAL_OUT/res.tgz.part $REAL_OUT/res.tgz; }
( while true; do sleep 60; pack; done ) & PACKER=$!
LOG=$RES/session.log
start=$(date +%s); stamp() { echo "[$(( $(date +%s) - start ))s] $*" >>"$LOG"; }
nvidia-smi --query-gpu=index,name,memory.total,utilization.gpu --format=csv >>"$LOG" 2>&1

# on a 2-GPU machine: FID_GPUS=0 FID_CORES=0-15 K_GPU=1 K_CORES=16-31 FID_S300_ONLY=1 (one GPU
# cannot finish the 4,800-step runs in time: the current default, 300 vs 2,400 steps, only)
FID_GPUS=${FID_GPUS:-0,1,2}; FID_CORES=${FID_CORES:-0-47}; K_GPU=${K_GPU:-3}; K_CORES=${K_CORES:-48-63}
stamp "lane F: fidelity on GPUs $FID_GPUS"
( export CUDA_VISIBLE_DEVICES=$FID_GPUS TRITON_CACHE_DIR=/tmp/tc_f OMP_NUM_THREADS=1
  if [ -n "${FID_S300_ONLY:-}" ]; then
    COMMON=(--out-dir $RES/fid --factor 8 --candidate 's300={}' --extra-candidate 's600={"steps": 600}')
    taskset -c $FID_CORES timeout -k 10 ${FID_LIMIT:-460} python3 benchmarks/proxy_fidelity.py "${COMMON[@]}" \
      --device cuda --per-gpu 12 --jobs 12 --extra-short-seeds 1 --deadline-s $(( ${FID_LIMIT:-460} - 15 )) \
      > $RES/fid/stdout.log 2>&1
    python3 benchmarks/proxy_fidelity.py "${COMMON[@]}" --report > $RES/fid/fidelity_report.txt 2>&1
  else
    OUT=$RES/fid FID_LIMIT=${FID_LIMIT:-460} taskset -c $FID_CORES bash benchmarks/fidelity_session.sh \
      > $RES/fid/stdout.log 2>&1
  fi
  stamp "lane F done rc=$?" ) &

stamp "lane K: attention then linear on GPU $K_GPU"
( export CUDA_VISIBLE_DEVICES=$K_GPU TRITON_CACHE_DIR=/tmp/tc_k
  OUT=$RES/att BUDGET=${ATT_BUDGET:-230} taskset -c $K_CORES timeout 260 bash benchmarks/attention_session.sh \
    > $RES/att/stdout.log 2>&1
  stamp "attention done rc=$?"
  OUT=$RES/lin LINEAR_BUDGET_S=${LIN_BUDGET:-215} taskset -c $K_CORES timeout 250 bash benchmarks/linear_session.sh \
    > $RES/lin/stdout2.log 2>&1
  stamp "linear done rc=$?" ) &
wait $(jobs -p | grep -v "^$PACKER$")
stamp "all lanes done"
kill $PACKER; pack
