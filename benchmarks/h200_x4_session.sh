#!/usr/bin/env bash
# One call on a 4-GPU H200 machine (device kind nvidia-h200-x4), three lanes at once, each on its
# own GPUs and CPU cores (taskset) with its own Triton cache, everything written under $OUT:
#   lane A, GPU 0,    cores  0-15: the 30-trial measured study on 1 GPU, cold (issues 8, 9);
#   lane B, GPU 1+2,  cores 16-47: the same study on 2 GPUs, cold, in its own Ray cluster (issue 9);
#   lane C, GPU 3,    cores 48-63: composed-vs-whole-model throughput at the study's target, then
#                                  `attnsearch tune` over one layer of every study mechanism (issue 8).
# The lanes share the host's memory bandwidth and disk; the GPUs and cores are each lane's own.
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# the device returns at most 8 files: everything goes under $RES, packed into $OUT/res.tgz every
# minute and at the end, so a time limit still returns what finished
RES=/tmp/res; mkdir -p $RES; REAL_OUT=$OUT; OUT=$RES
pack() { tar -czf $REAL_OUT/res.tgz.part -C $RES . && mv $REAL_OUT/res.tgz.part $REAL_OUT/res.tgz; }
( while true; do sleep 60; pack; done ) & PACKER=$!
LOG=$OUT/session.log
nvidia-smi --query-gpu=index,name,memory.total,utilization.gpu --format=csv >>"$LOG" 2>&1
nproc >>"$LOG"
start=$(date +%s); stamp() { echo "[$(( $(date +%s) - start ))s] $*" >>"$LOG"; }
STUDY_S=${STUDY_S:-470}

stamp "lane A: study on 1 GPU"
( CUDA_VISIBLE_DEVICES=0 TRITON_CACHE_DIR=/tmp/tc_a taskset -c 0-15 timeout $((STUDY_S + 90)) \
    python3 benchmarks/gpu_study.py --out-dir $OUT --tag s1_cold --gpus 1 --cpus 17 --workers 16 --trials 30 \
    --no-tune --timeout $STUDY_S --storage sqlite:////tmp/s1.db --memory --markdown > $OUT/s1.log 2>&1
  stamp "lane A done rc=$?" ) &

stamp "lane B: study on 2 GPUs"
( CUDA_VISIBLE_DEVICES=1,2 TRITON_CACHE_DIR=/tmp/tc_b taskset -c 16-47 timeout $((STUDY_S + 60)) \
    python3 benchmarks/gpu_study.py --out-dir $OUT --tag s2_cold --gpus 2 --cpus 33 --workers 32 --trials 30 \
    --no-tune --timeout $STUDY_S --storage sqlite:////tmp/s2.db --no-export --markdown > $OUT/s2.log 2>&1
  stamp "lane B done rc=$?" ) &

stamp "lane C: composition, then tuning"
( export CUDA_VISIBLE_DEVICES=3 TRITON_CACHE_DIR=/tmp/tc_c
  taskset -c 48-63 timeout 200 python3 benchmarks/throughput_model.py $OUT/composition.json \
    --layout ${COMP_LAYOUT:-SGSQSGSFSGSQSGSFSGSQSGSF} --seq-len 32768 --batch-tokens 32768 --d-model 2048 \
    --heads 16 --head-dim 128 --storage sqlite:////tmp/comp.db > $OUT/composition.log 2>&1
  stamp "composition done rc=$?"
  python3 - <<'PY'
from attnsearch.space import ArchConfig
kinds = [("full", {}), ("sliding_window", {"window": 1024}), ("sliding_window", {"window": 4096}),
         ("block_topk", {}), ("bigbird", {}), ("linear", {}), ("retnet", {}), ("mamba2", {}), ("gla", {}),
         ("deltanet", {}), ("gated_deltanet", {})]
layers = [{"mechanism": m, "params": p} for m, p in kinds]
ArchConfig(d_model=2048, n_heads=16, head_dim=128, n_layers=len(layers), layers=layers, vocab_size=32000,
           max_seq_len=32768).to_json("/tmp/kinds.json")
PY
  taskset -c 48-63 timeout ${TUNE_S:-330} python3 -m attnsearch.cli tune /tmp/kinds.json --seq-len 32768 --batch-tokens 65536 \
    --budget-s ${TUNE_BUDGET:-22} --storage sqlite:////tmp/tune.db --out $OUT/kinds.tuned.json \
    --report $OUT/tuning.json > $OUT/tuning.log 2>&1
  stamp "tuning done rc=$?" ) &
wait $(jobs -p | grep -v "^$PACKER$")
stamp "all lanes done"
kill $PACKER; pack
