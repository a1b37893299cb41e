#!/usr/bin/env bash
# One call on one H200 (CUDA_VISIBLE_DEVICES set by the caller, <= 16 cores), at most ~240 s,
# everything under $OUT:
#   1+2. benchmarks/attention_session.py -> $OUT/attention_session.json
#        GPU check of every new attention kernel path vs the fp32 reference (full, window,
#        random, top-k; T=8192 and 3000), then forward/backward times of the default and of each
#        option beside FlexAttention at T=8192, and a recommended config (timing.recommended_*)
#   3.   benchmarks/attention.py -> $OUT/attention_table.json: the committed defaults ("ours")
#        and the recommended overrides ("ours_tuned") beside FlexAttention, cuDNN / flash SDPA
#        and fla (skipped when absent), full/window at 8192 and 32768, random and top-k at 8192
# Each step runs under its own timeout and writes its JSON as it goes; the log is
# $OUT/attention_session.log. SMOKE=1 runs the plumbing on the CPU (Triton interpreter).
set -u
OUT=${OUT:?set OUT to the output folder}
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
export PYTHONPATH=$HERE:${PYTHONPATH:-} PYTHONUNBUFFERED=1
LOG=$OUT/attention_session.log
BUDGET=${BUDGET:-235}            # seconds for the whole script
STEP12_LIMIT=${STEP12_LIMIT:-130}
WORKERS=${WORKERS:-14}
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start ))s] $*" >>"$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - start) )); }

if [ "${SMOKE:-0}" = 1 ]; then
  export ATTN_BENCH_SMOKE=1 TRITON_INTERPRET=1
  WORKERS=1
else
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,clocks.sm,clocks.max.sm \
    --format=csv >>"$LOG" 2>&1
fi
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >>"$LOG" 2>&1
python3 -c "import fla; print('fla', getattr(fla, '__version__', '?'))" >>"$LOG" 2>&1 || echo "fla absent: its rows are skipped" >>"$LOG"

stamp "step 1+2: check new paths, time candidates (limit ${STEP12_LIMIT}s)"
timeout -k 5 "$STEP12_LIMIT" python3 benchmarks/attention_session.py "$OUT/attention_session.json" \
  --workers "$WORKERS" >>"$LOG" 2>&1
stamp "step 1+2 rc=$?"

# the recommended overrides, only when every check passed and the timing step finished
TUNED=$(python3 - "$OUT/attention_session.json" 2>>"$LOG" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    over = d.get("timing", {}).get("recommended_overrides")
    if over and d.get("check_all_ok"):
        print(json.dumps(over))
except Exception as exc:
    print(f"no recommendation: {exc!r}", file=sys.stderr)
PY
)
stamp "recommended overrides: ${TUNED:-none}"

LIMIT=$(left)
if [ "$LIMIT" -gt 20 ]; then
  stamp "step 3: table (limit ${LIMIT}s)"
  ARGS=(--skip-correctness --workers "$WORKERS")
  [ "${SMOKE:-0}" = 1 ] && ARGS+=(--quick --only "full causal T=256")
  [ -n "$TUNED" ] && ARGS+=(--tuned "$TUNED")
  timeout -k 5 "$LIMIT" python3 benchmarks/attention.py "$OUT/attention_table.json" "${ARGS[@]}" >>"$LOG" 2>&1
  stamp "step 3 rc=$?"
else
  stamp "step 3 skipped: ${LIMIT}s left"
fi
stamp "done"
