#!/usr/bin/env bash
# One GPU call (best on nvidia-h200-x4: 4 H200s, 64 cores; fewer GPUs work, more slowly), all
# output under $OUT: proxy fidelity (issue 3) of the 11 literature layouts at candidate default
# budgets and 8x each, on every visible GPU at once.
#   s300: the current default (300 steps)  vs 2,400 steps   (the CPU figure: Spearman 0.68)
#   s600: 600 steps                        vs 4,800 steps   (the candidate larger default)
#   then seed 1 of each short budget (seed-to-seed noise ceiling of the figure), then
#   s600lm4: 600 steps with text batches of 4 (25% fewer tokens per step: the cheaper step a
#   600-step default needs to fit 60 s on 2 CPU cores), then
#   s300lr2 / s600lr2: s300 / s600 at lr 0.02 (default 0.01); each of these extra runs starts
#   only if its estimated time (speed seen so far for its layout) ends before the deadline.
# Both budgets of a candidate use the same ProxySpec except steps (x8). EXTRA_CANDIDATES adds
# more, e.g. EXTRA_CANDIDATES='s450={"steps":450}' (queued after everything else).
#
# Cost estimate (why it fits in ~470 s): the proxy is tiny (d32, 4 layers, batches of 8 x 32-64
# tokens), so a step is launch-bound: ~3,700 (full) to ~5,900 (DeltaNet) torch ops per step on the
# CPU path, fewer on the GPU (Triton attention), ~30-50 ms of host time per step, and the training
# loop no longer syncs per step. The 1-GPU study at 150 steps ran 16 proxies on one H200 at
# ~6.5 steps/s each (~100 steps/s per GPU, with the old per-step syncs). s300+s600 with seeds is
# ~99k steps (x1.35 for the heavier layouts) = ~33k per GPU on 4 GPUs: ~330 s at 100 steps/s, plus
# Triton compiles (5-30 s per process, all processes at once). Every run starts at t=0 when
# PER_GPU x GPUs >= 44, so the 4,800-step runs (the critical path) are never queued behind others.
# A time limit keeps every finished run (files rewritten atomically after each run); the report
# at the end prints each candidate's rank correlations over the layouts done at both budgets.
set -u
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:?set OUT}
LOG=$OUT/fidelity_session.log
start=$(date +%s); stamp() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$LOG"; }

if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then NGPU=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
else NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU '); fi
CORES=$(nproc)
DEVICE=cuda
if [ "$NGPU" -lt 1 ]; then DEVICE=cpu; NGPU=1; fi          # CPU smoke run of the plumbing
PER_GPU=${PER_GPU:-$(( (CORES - 2) / NGPU ))}
[ "$PER_GPU" -gt 12 ] && PER_GPU=12
[ "$PER_GPU" -lt 1 ] && PER_GPU=1
LIMIT=${FID_LIMIT:-470}
stamp "device $DEVICE, $NGPU GPU(s), $CORES cores, $PER_GPU processes per GPU, limit ${LIMIT}s"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu --format=csv >>"$LOG" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >>"$LOG" 2>&1

CANDS=(--candidate "s300=${S300:-{\}}" --candidate "s600=${S600:-{\"steps\": 600\}}")
# queued after the main runs and their seed-1 runs; started only if they can end in time
CANDS+=(--extra-candidate "s600lm4=${S600LM4:-{\"steps\": 600, \"task_batch\": {\"lm\": 4\}\}}")
CANDS+=(--extra-candidate "s300lr2=${S300LR2:-{\"lr\": 0.02\}}" --extra-candidate "s600lr2=${S600LR2:-{\"steps\": 600, \"lr\": 0.02\}}")
for extra in ${EXTRA_CANDIDATES:-}; do CANDS+=(--extra-candidate "$extra"); done
COMMON=(--out-dir "$OUT" --factor 8 "${CANDS[@]}" ${LAYOUTS:+--layouts $LAYOUTS})

# GPU utilisation every 10 s while the runs go (is the GPU or the host the limit?)
( while sleep 10; do echo "[$(( $(date +%s) - start ))s] $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null | tr '\n' ' ') load $(cut -d' ' -f1 /proc/loadavg)"; done >"$OUT/gpu_util.log" 2>&1 ) &
MON=$!

stamp "fidelity runs"
timeout -k 10 "$LIMIT" python3 benchmarks/proxy_fidelity.py "${COMMON[@]}" --device "$DEVICE" --per-gpu "$PER_GPU" \
  --jobs "$PER_GPU" --extra-short-seeds 1 --deadline-s $(( LIMIT - 15 )) ${FID_ARGS:-} >>"$LOG" 2>&1
stamp "fidelity runs ended rc=$? (124 = time limit: finished runs are kept)"
kill "$MON" 2>/dev/null

# the tables and rank correlations of whatever finished (also after the time limit)
python3 benchmarks/proxy_fidelity.py "${COMMON[@]}" --report > "$OUT/fidelity_report.txt" 2>&1
cat "$OUT/fidelity_report.txt" | tee -a "$LOG"

# throughput of the proxies sharing the GPUs (the issue's "how many fit, tokens/s on the H200")
python3 - "$OUT" "$PER_GPU" "$NGPU" <<'PY' 2>&1 | tee "$OUT/throughput.txt" | tee -a "$LOG"
import glob, json, statistics, sys
out, per_gpu, ngpu = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
runs = [r for f in glob.glob(f"{out}/fidelity_*.json") for r in json.load(open(f))["runs"]]
if not runs:
    sys.exit("no finished runs")
elapsed = max(json.load(open(f))["elapsed_s"] for f in glob.glob(f"{out}/fidelity_*.json"))
tokens = sum(r["tokens_seen"] for r in runs)
print(f"{len(runs)} runs finished, {per_gpu} processes per GPU on {ngpu} GPU(s), {elapsed:.0f} s: "
      f"{tokens / elapsed:,.0f} tokens/s in all, {tokens / elapsed / ngpu:,.0f} per GPU (finished runs only)")
for factor in sorted({r["factor"] for r in runs}):
    by = {}
    for r in runs:
        if r["factor"] == factor:
            by.setdefault(r["preset"], []).append(r)
    print(f"x{factor:g}: steps/s per run (median over runs, while sharing the GPU): " + ", ".join(
        f"{k} {statistics.median(x['steps_per_s'] for x in v):.1f}" for k, v in sorted(by.items())))
    print(f"x{factor:g}: wall s per run (median): " + ", ".join(
        f"{k} {statistics.median(x['wall_time_s'] for x in v):.0f}" for k, v in sorted(by.items())))
PY
stamp "done"
