#!/usr/bin/env bash
# One call on a 2-GPU H200 machine (device kind nvidia-h200-x2), everything written under $OUT:
#   GPU 0: the 30-trial measured study on 1 GPU, cold benchmark cache (issues 8, 9), while
#   GPU 1: the gradient check of the linear / delta kernels at the benchmark shape (issue 7), then
#          the composed-vs-whole-model throughput check at the study's target (issue 8);
#   then the same study, cold again (a fresh database), on both GPUs: the 2-GPU speed-up.
# Each step has its own time limit so that the whole call fits in one 10-minute command.
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
LOG=$OUT/session.log
nvidia-smi --query-gpu=index,name,memory.total,utilization.gpu --format=csv >>"$LOG" 2>&1
start=$(date +%s); stamp() { echo "[$(( $(date +%s) - start ))s] $*" >>"$LOG"; }
STUDY="--trials 30 --tune-trials ${TUNE_TRIALS:-3} --tune-budget-s ${TUNE_BUDGET:-5}"

stamp "GPU 1: gradcheck, then composition check (background)"
( for c in linear:none linear:H linear:BTH linear:BTHK delta:none delta:H delta:BTH; do
    CUDA_VISIBLE_DEVICES=1 timeout 150 python3 benchmarks/linear_gradcheck.py /tmp/gc_${c/:/_}.json --bench-shape --only $c > /tmp/gc_${c/:/_}.log 2>&1 &
  done; wait
  python3 - > $OUT/gradcheck.json <<'PY'
import glob, json
out = {f: json.load(open(f)) for f in sorted(glob.glob("/tmp/gc_*.json"))}
out.update({f: open(f).read()[-1500:] for f in sorted(glob.glob("/tmp/gc_*.log"))})
print(json.dumps(out))
PY
  stamp "gradcheck done"
  CUDA_VISIBLE_DEVICES=1 timeout 120 python3 benchmarks/throughput_model.py $OUT/composition.json --layout ${COMP_LAYOUT:-SGSQSGSFSGSQSGSFSGSQSGSF} \
    --seq-len 32768 --batch-tokens 32768 --d-model 2048 --heads 16 --head-dim 128 > /tmp/comp.log 2>&1
  stamp "composition done rc=$?"; tail -c 2500 /tmp/comp.log >>"$LOG"
) &

stamp "study on 1 GPU, cold"
CUDA_VISIBLE_DEVICES=0 timeout ${S1_LIMIT:-270} python3 benchmarks/gpu_study.py --out-dir $OUT --tag s1_cold --gpus 1 \
  --workers 8 --timeout ${S1_TIMEOUT:-220} --storage sqlite:////tmp/s1.db --memory $STUDY >>"$LOG" 2>&1
stamp "study 1 done rc=$?"
wait; stamp "GPU 1 work done"

stamp "study on 2 GPUs, cold"
timeout ${S2_LIMIT:-240} python3 benchmarks/gpu_study.py --out-dir $OUT --tag s2_cold --gpus 2 --workers 16 \
  --timeout ${S2_TIMEOUT:-200} --storage sqlite:////tmp/s2.db --no-export $STUDY >>"$LOG" 2>&1
stamp "study 2 done rc=$?"
