#!/usr/bin/env bash
# Issue 7, one H200 (the GPU of CUDA_VISIBLE_DEVICES), at most ~240 s, everything under $OUT:
#   A. gradient check of every new gate path vs the float64 recurrence (fp32 + bf16, g down to -20, an
#      initial state, T=333 not a multiple of the chunk, mixed safe/unsafe GLA chunks), compiling our
#      candidates and fla's ops meanwhile (parallel processes);
#   B. old vs new gate paths and a few tiles at T=32768 (bf16, B=2, H=16, K=V=128, chunk 64);
#   C. benchmarks/linear.py with the committed defaults beside fla 0.6 at T=32768 and 8192 (+ peak memory);
#   D. per-stage times of the default paths, if time is left.
# $OUT/session.json (rewritten after every step), $OUT/table.json, $OUT/session.log, $OUT/stdout.log.
# Env: LINEAR_BUDGET_S (default 225: the driver's own budget), LINEAR_JOBS (default 14 processes in A),
#      LINEAR_CANDIDATES / LINEAR_GRADCHECKS (comma lists: only these candidates / gradient-check names,
#      e.g. "default"), LINEAR_OPS (comma list of ops, default all), LINEAR_A_MAX_S (cap of phase A,
#      default 115), LINEAR_SDPA=1 (cuDNN SDPA rows in C), LINEAR_TABLE=0 (A and B only: no fla, no C, no D).
# CPU check of the plumbing: OUT=/tmp/x bash benchmarks/linear_session.sh --smoke
set -u
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BUDGET=${LINEAR_BUDGET_S:-225}
{
  echo "start $(date -u +%FT%TZ) CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset} nproc=$(nproc)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.used,utilization.gpu --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
  python3 -c "import fla; print('fla', getattr(fla, '__version__', '?'))" || echo "fla not importable: no comparison"
} >"$OUT/stdout.log" 2>&1
# the driver keeps its own budget (each phase checks the time left); the outer limit only catches a hang
timeout -k 5 $(( ${BUDGET%.*} + 12 )) python3 benchmarks/linear_session.py "$OUT" --budget "$BUDGET" \
  --jobs "${LINEAR_JOBS:-14}" "$@" >>"$OUT/stdout.log" 2>&1
rc=$?
echo "linear_session.py exit $rc at $(date -u +%FT%TZ)" >>"$OUT/stdout.log"
tail -n 60 "$OUT/stdout.log"
exit 0
