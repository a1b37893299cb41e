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

stamp "lane F: fidelity on GPUs 0-2"
( CUDA_VISIBLE_DEVICES=0,1,2 TRITON_CACHE_DIR=/tmp/tc_f OUT=$RES/fid FID_LIMIT=${FID_LIMIT:-460} \
    taskset -c 0-47 bash benchmarks/fidelity_session.sh > $RES/fid/stdout.log 2>&1
  stamp "lane F done rc=$?" ) &

stamp "lane K: attention then linear on GPU 3"
( export CUDA_VISIBLE_DEVICES=3 TRITON_CACHE_DIR=/tmp/tc_k
  OUT=$RES/att BUDGET=${ATT_BUDGET:-230} taskset -c 48-63 timeout 260 bash benchmarks/attention_session.sh \
    > $RES/att/stdout.log 2>&1
  stamp "attention done rc=$?"
  OUT=$RES/lin LINEAR_BUDGET_S=${LIN_BUDGET:-215} taskset -c 48-63 timeout 250 bash benchmarks/linear_session.sh \
    > $RES/lin/stdout2.log 2>&1
  stamp "linear done rc=$?" ) &
wait $(jobs -p | grep -v "^$PACKER$")
stamp "all lanes done"
kill $PACKER; pack
