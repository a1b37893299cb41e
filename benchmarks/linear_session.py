"""One GPU session for issue 7's gate paths: gradient check, old-vs-new timing, table beside fla.

  python benchmarks/linear_session.py OUTDIR [--jobs 14] [--budget 230] [--smoke]

A. (parallel processes, compile-bound) gradient check of every new gate path against the float64
   recurrence at the benchmark's head size (benchmarks/linear_gradcheck.py --bench-shape: fp32 and bf16,
   g down to -20, an initial state, T=333 not a multiple of the chunk, mixed safe/unsafe GLA chunks), once
   with the committed defaults (which select the new paths) for every gate kind and the delta rule with
   and without gate, once per non-default new path (each check as two processes, its fp32 cases and its bf16
   ones, the fp32 ones started first: their compiles take minutes); meanwhile our candidate configs and fla's
   ops are compiled (run once at a short T) so that B and C time warm kernels.
B. (GPU alone) each candidate at T=32768 (bf16, B=2, H=16, K=V=128, chunk 64), fwd and fwd+bwd, beside
   the committed default in the same process; CANDIDATES says which ops a candidate can change.
C. (GPU alone) benchmarks/linear.py with the committed defaults beside fla at T=32768 and 8192, peak
   memory of fwd+bwd at 32768.
D. (if time is left) per-stage times of ours at T=32768 along the default paths (linear.run_breakdown).

OUTDIR/session.json is rewritten after every step (a step cut by its time limit leaves the others);
OUTDIR/table.json is linear.py's own JSON; OUTDIR/session.log the log of every subprocess.
--smoke: CPU, TRITON_INTERPRET=1, toy shapes (gradcheck --small, timing of the plumbing only, no C).

Session 10 (H100, results/h100_session10/call1) timed and checked the candidates of session 9 in one call with
LINEAR_ADOPT (below), and tabled the adopted configs. Waiting for a GPU: FUSED_FOLD 3 / 4 since data-dependent
sequences beyond the end pivot's span take FOLD 1's loop (they took the exact loop, 1.45x in Mamba-2's forward),
FUSED_FOLD 5 (folds chunks up to 72, which the benchmark's gates need), and the training forward through the
fused pass for scalar gates (the *_train candidates), in one call:
  LINEAR_SDPA=1 LINEAR_CANDIDATES=fold4_all,fold5_all,fold4_all_train,fold5_all_train,s16_fold5,s16_fold5_train
  LINEAR_GRADCHECKS=fold4_all,fold5_all,scale16,default
  LINEAR_ADOPT="s16_fold5_train|fold5_all_train|fold4_all_train|s16_fold5|fold5_all|fold4_all"
  LINEAR_BUDGET_S=555 LINEAR_A_MAX_S=285 OUT=... bash benchmarks/linear_session.sh   (about 430 s held)
Session 11 (H100, results/h100_session11/call1) ran that call (with bwd_kdec): FOLD 5 + SCALE16 + the fused training
forward became linear attention's defaults; its gated delta fp32 checks ran out of time (adopt now counts only the
group's own cases). The call that checks and tables the new defaults beside the old (session 11's second, results/h100_session11/call2):
  LINEAR_SDPA=1 LINEAR_CANDIDATES=pre11_fused LINEAR_GRADCHECKS=default LINEAR_BUDGET_S=480 LINEAR_A_MAX_S=220
Waiting for a GPU (session 11 ran out of device time): HEADS_FIRST (the backward's chunk-parallel kernels on a
(B * H, NT) grid), the backward gate pass's warps and DG_PREFIX (Mamba-2's state terms without the h^T G product),
checked, timed, adopted and tabled in one call (~320 s held; fp32 checks of DG_PREFIX too, its arithmetic changes):
  LINEAR_SDPA=1 LINEAR_CANDIDATES=heads_first,prep_bwd_w2,prep_bwd_w8,dg_prefix
  LINEAR_GRADCHECKS=heads_first,prep_bwd_warps,dg_prefix LINEAR_ADOPT="heads_first;prep_bwd_w2|prep_bwd_w8;dg_prefix"
  LINEAR_BUDGET_S=480 LINEAR_A_MAX_S=220
LINEAR_ADOPT picks, per slot of alternatives and op group, the fastest candidate that passed its gradient checks
and slowed nothing (ADOPT_CHECKS); the table then times the adopted configs over the defaults and phase E
gradient-checks them together in bf16; commit what it adopted as the defaults. LINEAR_BF16_ONLY=1 checks in bf16
only where fp32's compiles (minutes) do not fit.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GROUP = {"linear": "linear_attention", "retention": "linear_attention", "mamba2": "linear_attention",
         "gla": "linear_attention", "delta": "delta_rule", "gated_delta": "delta_rule"}
_GATED, _DELTAS = ("retention", "mamba2"), ("delta", "gated_delta")


def _fused(ops=("linear", "retention", "mamba2"), **over):
    """A candidate of the fused forward (FUSED_FWD 3: every forward takes it) for the ops it changes."""
    return ("delta_rule" if ops == _DELTAS else "linear_attention", {"FUSED_FWD": 3, **over}, ops)


# name -> (group, config over the committed default, the ops whose kernels it changes)
CANDIDATES = {
    "default": ("both", {}, tuple(GROUP)),
    "old_paths": ("linear_attention", {"PREP_SCALAR": 0, "PREP_CHANNEL": 0, "GLA_OUT_FUSED": 0},
                  ("retention", "mamba2", "gla")),
    "prep_scalar_fwd_too": ("linear_attention", {"PREP_SCALAR": 2}, ("retention", "mamba2")),
    "gla_prep_only": ("linear_attention", {"GLA_OUT_FUSED": 0}, ("gla",)),
    "gla_fused_out_only": ("linear_attention", {"PREP_CHANNEL": 0}, ("gla",)),
    "out_bv128_w8": ("linear_attention", {"OUT_BLOCK_V": 128, "out_num_warps": 8}, ("linear", "gla")),
    "out_w8": ("linear_attention", {"out_num_warps": 8}, ("linear", "gla")),
    "gated_bwd_bv32": ("linear_attention", {"GATED_BWD_BLOCK_V": 32}, ("retention", "mamba2", "gla")),
    "out_v_loop": ("linear_attention", {"OUT_V_LOOP": 1}, ("linear", "retention", "mamba2")),
    "out_v_loop_off": ("linear_attention", {"OUT_V_LOOP": 0}, ("linear", "retention", "mamba2")),
    # narrower V tiles of the scans (session 6, with the scalar gate's decay then on v: 1.00-1.05x, no gain)
    "scan_k128_v32": ("linear_attention", {"BLOCK_K": 128, "BLOCK_V": 32}, ("linear", "retention", "mamba2")),
    "scan_k64_v32": ("linear_attention", {"BLOCK_K": 64, "BLOCK_V": 32}, ("linear", "retention", "mamba2")),
    "out_v_loop_w8": ("linear_attention", {"OUT_V_LOOP": 1, "out_num_warps": 8}, ("linear", "retention", "mamba2")),
    "delta_out_v_loop": ("delta_rule", {"OUT_V_LOOP": 1}, ("delta", "gated_delta")),
    "delta_out_v_loop_w8": ("delta_rule", {"OUT_V_LOOP": 1, "out_num_warps": 8}, ("delta", "gated_delta")),
    "delta_old_paths": ("delta_rule", {"PREP_SCALAR": 0}, ("gated_delta",)),
    "delta_gated_bwd_bv16": ("delta_rule", {"GATED_BWD_BLOCK_V": 16}, ("gated_delta",)),
    # V tiles of 16 for the ungated delta rule's per-chunk backward: its dqk kernel then fits two 8-warp blocks
    # per SM without spilling (124 registers at 2-3 stages; sm_90 compile, results/h200_session6/sass_launch_grid_cpu.txt)
    "delta_bwd_bv16": ("delta_rule", {"BWD_BLOCK_V": 16}, ("delta",)),
    "delta_bwd_bv16_s2": ("delta_rule", {"BWD_BLOCK_V": 16, "bwd_num_stages": 2}, ("delta",)),
    # WY_BWD_SPLIT 1: the backward through the UT transform as `_delta_bwd_dw_kernel` + `_delta_bwd_wy_split_kernel`
    # (sm_90 compile, 8 warps, V tiles 16 / 32, 1-3 stages: 99-128 and 79-102 registers, two blocks per SM, 45-57%
    # of the instructions; the single kernel: 230-255 registers, one block; +32 KB of traffic per 144 KB chunk)
    "wy_split": ("delta_rule", {"WY_BWD_SPLIT": 1}, ("delta", "gated_delta")),
    # with V tiles of 16 the dqk kernel fits two blocks per SM too (ungated)
    "wy_split_bv16": ("delta_rule", {"WY_BWD_SPLIT": 1, "BWD_BLOCK_V": 16}, ("delta", "gated_delta")),
    "wy_split_bv16_s2": ("delta_rule", {"WY_BWD_SPLIT": 1, "BWD_BLOCK_V": 16, "bwd_num_stages": 2},
                         ("delta", "gated_delta")),
    "delta_prep_bwd_only": ("delta_rule", {"PREP_SCALAR": 1}, ("gated_delta",)),
    # the backward state scan on its own tile / launch (SCAN_BWD_*), apart from the forward scan's
    "dscan_bv64": ("delta_rule", {"SCAN_BWD_BLOCK_V": 64}, ("delta", "gated_delta")),
    "dscan_bv64_w8": ("delta_rule", {"SCAN_BWD_BLOCK_V": 64, "scan_bwd_num_warps": 8}, ("delta", "gated_delta")),
    "dscan_w8": ("delta_rule", {"scan_bwd_num_warps": 8}, ("delta", "gated_delta")),
    "dscan_w2": ("delta_rule", {"scan_bwd_num_warps": 2}, ("delta", "gated_delta")),
    "dscan_s2": ("delta_rule", {"scan_bwd_num_stages": 2}, ("delta", "gated_delta")),
    "dscan_s4": ("delta_rule", {"scan_bwd_num_stages": 4}, ("delta", "gated_delta")),
    "dscan_bv16": ("delta_rule", {"SCAN_BWD_BLOCK_V": 16}, ("delta", "gated_delta")),
    "dscan_bv16_w2": ("delta_rule", {"SCAN_BWD_BLOCK_V": 16, "scan_bwd_num_warps": 2}, ("delta", "gated_delta")),
    "lscan_bwd_w8": ("linear_attention", {"scan_bwd_num_warps": 8}, ("linear", "retention", "mamba2")),
    "lscan_bwd_bv128": ("linear_attention", {"SCAN_BWD_BLOCK_V": 128, "scan_bwd_num_warps": 8},
                        ("linear", "retention", "mamba2")),
    # chunk 128 (an op argument, not a config key; the tuner's scan family searches it): half the states
    # written and read, twice the intra-chunk work
    "chunk128": ("both", {"chunk_size": 128}, tuple(GROUP)),
    "chunk32": ("both", {"chunk_size": 32}, tuple(GROUP)),
    "ret_out_w8": ("linear_attention", {"out_num_warps": 8}, ("retention",)),
    # the scan and the output in one sequential pass (`_fused_fwd_kernel`, FUSED_FWD 3): the fwd column (no grad)
    # writes no states, the fwd+bwd column's forward stores h_n for the backward from the same pass
    "fused_bv32": _fused(FUSED_BLOCK_V=32, fused_num_stages=2),
    "fused_bv32_s3": _fused(FUSED_BLOCK_V=32, fused_num_stages=3),
    "fused_bv32_s4": _fused(FUSED_BLOCK_V=32, fused_num_stages=4),
    "fused_bv32_w8": _fused(FUSED_BLOCK_V=32, fused_num_warps=8),
    "fused_bv16": _fused(FUSED_BLOCK_V=16, fused_num_stages=2),
    "fused_bv16_s3": _fused(FUSED_BLOCK_V=16, fused_num_stages=3),
    "fused_bv64": _fused(FUSED_BLOCK_V=64, fused_num_stages=2),
    "fused_bv64_s3": _fused(FUSED_BLOCK_V=64, fused_num_stages=3),
    "fused_bv64_w8": _fused(FUSED_BLOCK_V=64, fused_num_warps=8),
    "fused_s4_g3": _fused(fused_num_stages=4, fused_gated_num_stages=3),
    "fused_s4_g4": _fused(_GATED, fused_num_stages=4, fused_gated_num_stages=4),
    "fused_s4_g2": _fused(_GATED, fused_num_stages=4, fused_gated_num_stages=2),
    # FUSED_FOLD 2: a fixed decay pivots at the chunk's end (other gates as FUSED_FOLD 1)
    "fold2": ("both", {"FUSED_FWD": 3, "FUSED_FOLD": 2}, ("retention", "mamba2", "gated_delta")),
    # the delta rule's scan and output in one pass (after the UT transform)
    "dfused_s3": _fused(_DELTAS, fused_num_stages=3, fused_gated_num_stages=3),
    "dfused_s4": _fused(_DELTAS, fused_num_stages=4, fused_gated_num_stages=4),
    "dfused_s2": _fused(_DELTAS, fused_num_stages=2, fused_gated_num_stages=2),
    # the fused pass with one exponential per score for every sequence (FUSED_FOLD 0)
    "fused_nofold": _fused(_GATED, FUSED_BLOCK_V=32, fused_num_stages=3, FUSED_FOLD=0),
    "fused_nofold_s4": _fused(_GATED, FUSED_BLOCK_V=32, fused_num_stages=4, FUSED_FOLD=0),
    # a data-dependent scalar gate's b / b_0 / b_last loaded one chunk ahead in the fused pass
    "prefetch": ("both", {"FUSED_FWD": 3, "FUSED_PREFETCH": 1}, ("mamba2", "gated_delta")),
    "prefetch_fwd": ("both", {"FUSED_PREFETCH": 1}, ("mamba2", "gated_delta")),
    "prefetch_fold2": ("both", {"FUSED_FWD": 3, "FUSED_PREFETCH": 1, "FUSED_FOLD": 2},
                       ("retention", "mamba2", "gated_delta")),
    # the fused pass with its state in two halves of K (FUSED_SPLIT_K), as the delta rule's backward scan now is
    "fused_split": ("both", {"FUSED_SPLIT_K": 1}, ("linear", "retention", "mamba2", "delta", "gated_delta")),
    "fused_split_s3": ("both", {"FUSED_SPLIT_K": 1, "fused_num_stages": 3},
                       ("linear", "retention", "mamba2", "delta", "gated_delta")),
    "fused_split_s4": ("both", {"FUSED_SPLIT_K": 1, "fused_num_stages": 4, "fused_gated_num_stages": 4},
                       ("linear", "retention", "mamba2", "delta", "gated_delta")),
    "fused_split_bv16": ("both", {"FUSED_SPLIT_K": 1, "FUSED_BLOCK_V": 16},
                         ("linear", "retention", "mamba2", "delta", "gated_delta")),
    "split_prefetch": ("both", {"FUSED_SPLIT_K": 1, "FUSED_PREFETCH": 1}, ("mamba2", "gated_delta")),
    "split_fold2": ("both", {"FUSED_SPLIT_K": 1, "FUSED_FOLD": 2}, ("retention",)),
    "split_fold2_train": ("both", {"FUSED_SPLIT_K": 1, "FUSED_FOLD": 2, "FUSED_FWD": 3}, ("retention",)),
    "split_prefetch_train": ("both", {"FUSED_SPLIT_K": 1, "FUSED_PREFETCH": 1, "FUSED_FWD": 3}, ("mamba2",)),
    "fold2_only": ("both", {"FUSED_FOLD": 2}, ("retention",)),
    # the delta rule's backward scan with its [K, BV] state gradient (before SCAN_BWD_SPLIT_K)
    "dscan_split_off": ("delta_rule", {"SCAN_BWD_SPLIT_K": 0}, ("delta", "gated_delta")),
    "dscan_split_s4": ("delta_rule", {"scan_bwd_num_stages": 4}, ("delta", "gated_delta")),
    "dscan_split_s2": ("delta_rule", {"scan_bwd_num_stages": 2}, ("delta", "gated_delta")),
    # the backward forms Tm again instead of taking the forward's (before SAVE_TM)
    "save_tm_off": ("delta_rule", {"SAVE_TM": 0}, ("delta", "gated_delta")),
    "dbwd_w4": ("delta_rule", {"bwd_num_warps": 4}, ("delta", "gated_delta")),
    "dbwd_s2": ("delta_rule", {"bwd_num_stages": 2}, ("delta", "gated_delta")),
    "dbwd_s4": ("delta_rule", {"bwd_num_stages": 4}, ("delta", "gated_delta")),
    "dbwd_bv64": ("delta_rule", {"BWD_BLOCK_V": 64}, ("delta", "gated_delta")),
    # around bwd_num_warps 4 (session 8: 0.944x / 0.961x of 8 warps for delta / gated delta fwd+bwd)
    "dbwd_w8": ("delta_rule", {"bwd_num_warps": 8}, ("delta", "gated_delta")),
    # gated inputs at the ungated 4 warps (session 8: gated delta fwd+bwd 0.963x of 8 warps; not yet gradient-checked)
    "dbwd_gated_w4": ("delta_rule", {"gated_bwd_num_warps": 4}, ("gated_delta",)),
    "dbwd_w4_bv64": ("delta_rule", {"bwd_num_warps": 4, "BWD_BLOCK_V": 64}, ("delta", "gated_delta")),
    "dbwd_w4_bv16": ("delta_rule", {"bwd_num_warps": 4, "BWD_BLOCK_V": 16}, ("delta", "gated_delta")),
    "dbwd_w4_s4": ("delta_rule", {"bwd_num_warps": 4, "bwd_num_stages": 4}, ("delta", "gated_delta")),
    "dbwd_w4_s2": ("delta_rule", {"bwd_num_warps": 4, "bwd_num_stages": 2}, ("delta", "gated_delta")),
    "lbwd_w4": ("linear_attention", {"bwd_num_warps": 4}, ("linear", "retention", "mamba2")),
    "lbwd_bv32_w4": ("linear_attention", {"BWD_BLOCK_V": 32, "bwd_num_warps": 4}, ("linear", "retention", "mamba2")),
    # FUSED_FOLD 3: the fixed decay applied to the state first, full chunks only (sm_90: 717 against 751 instructions)
    "fold3": ("linear_attention", {"FUSED_FOLD": 3}, ("retention",)),
    "fold3_train": ("linear_attention", {"FUSED_FOLD": 3, "FUSED_FWD": 3}, ("retention",)),
    # FUSED_FOLD 3 for data-dependent scalar gates too (sm_90: Mamba-2 780 against 827, gated delta 907 against 924)
    "fold3_all": ("both", {"FUSED_FOLD": 3}, ("retention", "mamba2", "gated_delta")),
    "fold3_all_train": ("both", {"FUSED_FOLD": 3, "FUSED_FWD": 3}, ("retention", "mamba2")),
    # FUSED_FOLD 4: FOLD 3 with the state's decay carried as a scalar (sm_90 loops about 2% shorter than FOLD 3)
    "fold4_all": ("both", {"FUSED_FOLD": 4}, ("retention", "mamba2", "gated_delta")),
    "fold4_all_train": ("both", {"FUSED_FOLD": 4, "FUSED_FWD": 3}, ("retention", "mamba2")),
    # FUSED_FOLD 5: FOLD 4 folding data-dependent chunks up to LAZY_SPAN (72; the benchmark's gates span 61-72)
    "fold5_all": ("both", {"FUSED_FOLD": 5}, ("retention", "mamba2", "gated_delta")),
    "fold5_all_train": ("both", {"FUSED_FOLD": 5, "FUSED_FWD": 3}, ("retention", "mamba2")),
    "s16_fold5": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 5}, ("retention", "mamba2", "gated_delta")),
    "s16_fold5_train": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 5, "FUSED_FWD": 3}, ("retention", "mamba2")),
    # linear attention's defaults before session 11 (FUSED_FWD 2, FOLD 2, no SCALE16), beside the new ones
    "pre11_fused": ("linear_attention", {"FUSED_FWD": 2, "FUSED_FOLD": 2, "FUSED_SCALE16": 0}, ("retention", "mamba2")),
    # FUSED_SCALE16: v's row factors by packed 16-bit multiplies (sm_90 inference loops 5-9% shorter)
    "s16_fold2": ("both", {"FUSED_SCALE16": 1}, ("retention", "mamba2", "gated_delta")),
    "s16_fold3": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 3}, ("retention", "mamba2", "gated_delta")),
    "s16_fold4": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 4}, ("retention", "mamba2", "gated_delta")),
    "s16_fold3_train": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 3, "FUSED_FWD": 3}, ("retention", "mamba2")),
    "s16_fold4_train": ("both", {"FUSED_SCALE16": 1, "FUSED_FOLD": 4, "FUSED_FWD": 3}, ("retention", "mamba2")),
    # Mamba-2's gate gradient as one masked row sum (sm_90: per-chunk backward 2,776 against 2,984 instructions)
    "dg_one_sum": ("linear_attention", {"DG_ONE_SUM": 1}, ("mamba2",)),
    # Mamba-2's gate gradient in fla's form on chunks whose steps decay by at most 2 on average (both forms in one
    # kernel, a branch per chunk: sm_90 3,304 instructions, against 2,984 for the exact form alone)
    "dg_weak": ("linear_attention", {"DG_WEAK": 1}, ("mamba2",)),
    # the keys' decay multiplied into k before the per-chunk backward's V loop (sm_90: Mamba-2's loop 359 against
    # 426 instructions, RetNet's 278 against 341)
    "bwd_kdec": ("linear_attention", {"BWD_KDEC": 1}, ("retention", "mamba2")),
    # the per-chunk backward and the backward's gate pass on a (B * H, NT) grid: the programs in flight read
    # neighbouring rows (the gate pass moves 268 MB in 0.19 ms on the H100, 1.4 TB/s)
    "heads_first": ("linear_attention", {"HEADS_FIRST": 1}, ("linear", "retention", "mamba2", "gla")),
    # Mamba-2's gate-gradient state terms from a prefix sum over chunks (sm_90: per-chunk backward loop 347
    # against 426 instructions, 32 against 40 tensor-core ops)
    "dg_prefix": ("linear_attention", {"DG_PREFIX": 1}, ("mamba2",)),
    "prep_bwd_w2": ("linear_attention", {"prep_bwd_num_warps": 2}, ("mamba2",)),
    "prep_bwd_w8": ("linear_attention", {"prep_bwd_num_warps": 8}, ("mamba2",)),
    "dg_weak_one_sum": ("linear_attention", {"DG_WEAK": 1, "DG_ONE_SUM": 1}, ("mamba2",)),
    # the same from two launches, one per form (weak chunks' kernel 2,544 instructions without spills)
    "dg_weak2": ("linear_attention", {"DG_WEAK": 2, "DG_ONE_SUM": 1}, ("mamba2",)),
    # the scans' in-loop row factors by packed 16-bit multiplies (sm_90: Mamba-2's backward scan 425 against 469
    # instructions in the loop, with the gate pass skipped: PREP_SCALAR 0)
    "scan_s16": ("linear_attention", {"SCAN_SCALE16": 1}, ("retention", "mamba2")),
    "prep0_s16": ("linear_attention", {"SCAN_SCALE16": 1, "PREP_SCALAR": 0}, ("mamba2",)),
    # GLA's per-chunk backward with q, k and the gate loaded again after its V loop (sm_90 spills halved)
    "gla_reload": ("linear_attention", {"GLA_BWD_RELOAD": 1}, ("gla",)),
    # GLA's per-chunk backward from two launches, safe and unsafe chunks (sm_90, safe chunks: 6,216 instructions
    # against 6,496; with RELOAD 6,416 and 620 B spilled)
    "gla_split": ("linear_attention", {"GLA_BWD_SPLIT": 1}, ("gla",)),
    "gla_split_reload": ("linear_attention", {"GLA_BWD_SPLIT": 1, "GLA_BWD_RELOAD": 1}, ("gla",)),
    "fold1_noprefetch": ("both", {"FUSED_FOLD": 1, "FUSED_PREFETCH": 0}, ("retention", "mamba2", "gated_delta")),
    "mamba_prep0": ("linear_attention", {"PREP_SCALAR": 0}, ("mamba2",)),
    "bwd_s2": ("linear_attention", {"bwd_num_stages": 2}, ("linear", "retention", "mamba2")),
    "ret_out_bv128_w8": ("linear_attention", {"OUT_BLOCK_V": 128, "out_num_warps": 8}, ("retention",)),
}
_FOLD_CASES = ("linear:Hfixed", "linear:BTH", "delta:BTH")


def _fold_configs(fold, **over):
    """A FUSED_FOLD check's configs: linear attention's fused pass in training too, the delta rule's already."""
    return {"linear_attention": {"FUSED_FWD": 3, "FUSED_FOLD": fold, **over},
            "delta_rule": {"FUSED_FOLD": fold, **over}}


# gradient-check jobs: (name, --only cases, configs over the defaults)
GRADCHECKS = [(f"default {c}", c, {}) for c in
              ("linear:none", "linear:H", "linear:Hfixed", "linear:BTH", "linear:BTHK", "delta:none", "delta:H",
               "delta:BTH")] + [
    ("scan_bwd_own", "linear:none,linear:Hfixed,delta:none,delta:BTH",
     {"linear_attention": {"SCAN_BWD_BLOCK_V": 128, "scan_bwd_num_warps": 8},
      "delta_rule": {"SCAN_BWD_BLOCK_V": 64, "scan_bwd_num_warps": 8}}),
    ("prep_scalar_fwd_too", "linear:H,linear:BTH", {"linear_attention": {"PREP_SCALAR": 2}}),
    ("gla_prep_only", "linear:BTHK", {"linear_attention": {"GLA_OUT_FUSED": 0}}),
    ("gla_fused_out_only", "linear:BTHK", {"linear_attention": {"PREP_CHANNEL": 0}}),
    ("delta_prep_bwd_only", "delta:BTH", {"delta_rule": {"PREP_SCALAR": 1}}),
    ("wy_split", "delta:none,delta:BTH", {"delta_rule": {"WY_BWD_SPLIT": 1}}),
    ("wy_split_bv16", "delta:none,delta:BTH", {"delta_rule": {"WY_BWD_SPLIT": 1, "BWD_BLOCK_V": 16}}),
    ("gated_bwd_bv32", "linear:BTH,linear:BTHK", {"linear_attention": {"GATED_BWD_BLOCK_V": 32}}),
] + [(f"fused {c}", c, {"linear_attention": {"FUSED_FWD": 3}}) for c in
       ("linear:none", "linear:H", "linear:Hfixed", "linear:BTH")] + [
    ("fold2", "linear:Hfixed,linear:BTH", {"linear_attention": {"FUSED_FWD": 3, "FUSED_FOLD": 2}}),
    ("prefetch", "linear:BTH,delta:BTH", {"linear_attention": {"FUSED_FWD": 3, "FUSED_PREFETCH": 1},
                                          "delta_rule": {"FUSED_PREFETCH": 1}}),
    ("split", "linear:none,linear:Hfixed,linear:BTH,delta:none,delta:BTH",
     {"linear_attention": {"FUSED_FWD": 3, "FUSED_SPLIT_K": 1, "FUSED_PREFETCH": 1, "FUSED_FOLD": 2},
      "delta_rule": {"FUSED_SPLIT_K": 1, "FUSED_PREFETCH": 1}}),
    # one process per case: their fp32 compiles at 4 warps took 116-171 s each on the H200 (session 8)
    ("gated_w4 delta:H", "delta:H", {"delta_rule": {"gated_bwd_num_warps": 4}}),
    ("gated_w4 delta:BTH", "delta:BTH", {"delta_rule": {"gated_bwd_num_warps": 4}}),
    ("fold3", "linear:Hfixed", {"linear_attention": {"FUSED_FWD": 3, "FUSED_FOLD": 3}}),
] + [(f"fold{f}_all {c}", c, _fold_configs(f)) for f, cases in
       ((3, ("linear:Hfixed", "linear:BTH", "delta:H", "delta:BTH")), (4, _FOLD_CASES), (5, _FOLD_CASES))
       for c in cases] + [
    (f"scale16 fold{f} {c}", c, _fold_configs(f, FUSED_SCALE16=1)) for f in (3, 4, 5) for c in _FOLD_CASES] + [
    ("dg_one_sum", "linear:BTH", {"linear_attention": {"DG_ONE_SUM": 1}}),
    ("gla_reload", "linear:BTHK", {"linear_attention": {"GLA_BWD_RELOAD": 1}}),
    ("gla_split", "linear:BTHK", {"linear_attention": {"GLA_BWD_SPLIT": 1, "GLA_BWD_RELOAD": 1}}),
    ("dg_weak", "linear:BTH", {"linear_attention": {"DG_WEAK": 1}}),
    ("bwd_kdec", "linear:Hfixed,linear:BTH", {"linear_attention": {"BWD_KDEC": 1}}),
    ("heads_first", "linear:none,linear:Hfixed,linear:BTH,linear:BTHK", {"linear_attention": {"HEADS_FIRST": 1}}),
    ("dg_prefix", "linear:BTH", {"linear_attention": {"DG_PREFIX": 1}}),
    ("prep_bwd_warps 2", "linear:BTH", {"linear_attention": {"prep_bwd_num_warps": 2}}),
    ("prep_bwd_warps 8", "linear:BTH", {"linear_attention": {"prep_bwd_num_warps": 8}}),
    ("scan_s16", "linear:Hfixed,linear:BTH", {"linear_attention": {"SCAN_SCALE16": 1, "PREP_SCALAR": 0}}),
    ("dg_weak_one_sum", "linear:BTH", {"linear_attention": {"DG_WEAK": 1, "DG_ONE_SUM": 1}}),
    ("dg_weak2", "linear:BTH", {"linear_attention": {"DG_WEAK": 2, "DG_ONE_SUM": 1}}),
    ("fused delta:none", "delta:none", {"delta_rule": {"FUSED_FWD": 3}}),
    ("fused delta:BTH", "delta:BTH", {"delta_rule": {"FUSED_FWD": 3}}),
    ("fused_nofold", "linear:Hfixed,linear:BTH", {"linear_attention": {"FUSED_FWD": 3, "FUSED_FOLD": 0}}),
    ("out_v_loop", "linear:none,linear:BTH,delta:none,delta:BTH",
     {"linear_attention": {"OUT_V_LOOP": 1}, "delta_rule": {"OUT_V_LOOP": 1}}),
]


# LINEAR_ADOPT: the candidates phase C's table may take over the defaults, as slots of alternatives that set the
# same keys ("s16_fold4_train|s16_fold3_train;dg_weak2|dg_one_sum"). Per slot and per op group, the candidate
# with the best mean time / default over its ops of that group is adopted if it passed its gradient checks in
# phase A (ADOPT_CHECKS: the GRADCHECKS name, or the prefix of several) and no time of those ops rose by more
# than ADOPT_NOISE; the adopted configs, merged, are what the table times (linear.py --configs), and what the
# session's author then commits as the defaults, so that one GPU call measures and tables them.
ADOPT_CHECKS = {"s16_fold4": "scale16 fold4", "s16_fold4_train": "scale16 fold4", "s16_fold3": "scale16 fold3",
                "s16_fold3_train": "scale16 fold3", "fold4_all": "fold4_all", "fold3_all": "fold3_all",
                "fold4_all_train": "fold4_all", "fold3_all_train": "fold3_all", "fold5_all": "fold5_all",
                "fold5_all_train": "fold5_all", "s16_fold5": "scale16 fold5", "s16_fold5_train": "scale16 fold5",
                "fold3": "fold3", "dg_weak2": "dg_weak2", "dg_weak": "dg_weak", "dg_weak_one_sum": "dg_weak_one_sum",
                "dg_one_sum": "dg_one_sum", "prep0_s16": "scan_s16", "gla_reload": "gla_reload",
                "gla_split_reload": "gla_split", "dbwd_gated_w4": "gated_w4", "bwd_kdec": "bwd_kdec",
                "heads_first": "heads_first",
                "prep_bwd_w2": "prep_bwd_warps", "prep_bwd_w8": "prep_bwd_warps",
                "dg_prefix": "dg_prefix"}
ADOPT_NOISE, ADOPT_GAIN = 1.01, 0.99


def adopt_slots():
    """LINEAR_ADOPT as a list of slots, each a list of candidate names."""
    slots = [[n.strip() for n in slot.split("|") if n.strip()] for slot in os.environ.get("LINEAR_ADOPT", "").split(";")]
    unknown = sorted({n for slot in slots for n in slot if n not in ADOPT_CHECKS})
    if unknown:
        sys.exit(f"LINEAR_ADOPT: no adoptable candidate named {', '.join(unknown)} (ADOPT_CHECKS)")
    return [slot for slot in slots if slot]


GROUP_CASE = {"linear_attention": "linear:", "delta_rule": "delta:"}
# phase A's jobs per gradient check: its fp32 cases and its bf16 cases apart (file suffix, linear_gradcheck flags)
GC_PARTS = (("_fp32", ["--fp32-only"]), ("_bf16", ["--bf16-only"]))


def gradchecks_passed(results, check, group=None):
    """Did every gradient check of this name (or name prefix) pass, counting only the cases of the op group
    (a case "linear:BTH" belongs to linear_attention) when one is named?"""
    mine = [r for r in results if r.get("path") == check or str(r.get("path")).startswith(check + " ")]
    if group:
        mine = [r for r in mine if not _case_of(r) or _case_of(r).startswith(GROUP_CASE[group])]
    return bool(mine) and all(r.get("ok") for r in mine)


def _case_of(result):
    """The case ("linear:BTH") a gradient-check result belongs to: its own, its path's last word with a colon, or
    its op ("linear:"); "" when none says."""
    if result.get("case"):
        return result["case"]
    words = str(result.get("path", "")).split()
    return next((w for w in reversed(words) if ":" in w), f"{result['op']}:" if result.get("op") else "")


def adopt(slots, vs_default, gradcheck_results):
    """({group: config over the defaults}, [why each slot took what it took]) from phase B's times / default."""
    adopted = {"linear_attention": {}, "delta_rule": {}}
    picks = []
    for slot in slots:
        for grp in adopted:
            scored = []
            for name in slot:
                ops = [op for op in (vs_default.get(name) or {}) if GROUP[op] == grp]
                rels = [v for op in ops for v in vs_default[name][op].values()]
                if not ops or None in rels:
                    continue
                why = {"candidate": name, "group": grp, "mean": round(sum(rels) / len(rels), 4), "worst": max(rels),
                       "gradcheck": gradchecks_passed(gradcheck_results, ADOPT_CHECKS[name], grp)}
                why["ok"] = why["gradcheck"] and why["worst"] <= ADOPT_NOISE and why["mean"] < ADOPT_GAIN
                scored.append(why)
            ok = sorted((w for w in scored if w["ok"]), key=lambda w: w["mean"])
            if ok:
                name = ok[0]["candidate"]
                adopted[grp].update(config_for(name, next(op for op in CANDIDATES[name][2] if GROUP[op] == grp)))
            picks.append({"slot": "|".join(slot), "group": grp, "adopted": ok[0]["candidate"] if ok else None,
                          "scored": scored})
    return {g: c for g, c in adopted.items() if c}, picks


def _env_list(name):
    """A comma-separated environment list, or None when unset (then everything is run)."""
    value = os.environ.get(name)
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def selected_candidates():
    """CANDIDATES filtered by LINEAR_CANDIDATES (e.g. "default"); "default" is always kept."""
    keep = _env_list("LINEAR_CANDIDATES")
    unknown = sorted(set(keep or ()) - set(CANDIDATES))
    if unknown:  # a misspelt name would otherwise cost a GPU session its comparison
        sys.exit(f"LINEAR_CANDIDATES: no candidate named {', '.join(unknown)}")
    return {n: c for n, c in CANDIDATES.items() if keep is None or n in keep or n == "default"}


def selected_ops():
    """The ops this session runs (LINEAR_OPS, a comma list; default all), in the table's order: fla's GLA
    compiles longest (it ran past 170 s of compiling), so it comes last and a cut loses the fewest rows."""
    keep = _env_list("LINEAR_OPS")
    return [op for op in ("linear", "retention", "mamba2", "delta", "gated_delta", "gla")
            if keep is None or op in keep]


def selected_gradchecks():
    """GRADCHECKS whose name starts with one of LINEAR_GRADCHECKS (e.g. "default")."""
    keep = _env_list("LINEAR_GRADCHECKS")
    unknown = [k for k in keep or () if not any(g[0].startswith(k) for g in GRADCHECKS)]
    if unknown:
        sys.exit(f"LINEAR_GRADCHECKS: no gradient check named {', '.join(unknown)}")
    return [g for g in GRADCHECKS if keep is None or any(g[0].startswith(k) for k in keep)]


def config_for(name, op):
    group, over, _ops = CANDIDATES[name]
    return dict(over) if group in ("both", GROUP[op]) else {}


def candidate_fn(lb, op, x, name):
    """Our op under a candidate: its config, and its chunk size where it names one (key "chunk_size")."""
    cfg = config_for(name, op)
    chunk = cfg.pop("chunk_size", 64)
    return lb.ours_fn(op, x, cfg, chunk_size=chunk)


def task_warm(spec):
    """Compile: run ours (each candidate config) or fla once, fwd+bwd and fwd, at a short T."""
    import torch

    import linear as lb
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for op in spec["ops"]:
        x = lb.make_inputs(op, spec["B"], spec["T"], spec["H"], spec["K"], spec["K"], device, dtype=dtype)
        leaves = [t.requires_grad_(True) for n, t in x.items() if n != "g_head"]
        for name in spec.get("candidates") or [None]:
            fn = candidate_fn(lb, op, x, name) if spec["who"] == "ours" else lb.fla_fn(op, x)
            lb.compile_once(fn, leaves, f"{spec['who']} {op} {name}")


def main():
    global CANDIDATES, GRADCHECKS
    CANDIDATES, GRADCHECKS = selected_candidates(), selected_gradchecks()
    slots = adopt_slots()
    args = sys.argv[1:]
    if args and args[0] == "--task":
        task_warm(json.loads(args[1]))
        return 0
    smoke = "--smoke" in args
    jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else 14
    budget = float(args[args.index("--budget") + 1]) if "--budget" in args else 230.0
    values = {args[i + 1] for i, a in enumerate(args) if a in ("--jobs", "--budget") and i + 1 < len(args)}
    outdir = [a for a in args if not a.startswith("--") and a not in values][0]
    os.makedirs(outdir, exist_ok=True)
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    t_start = time.time()
    left = lambda: budget - (time.time() - t_start)  # noqa: E731
    import torch

    import linear as lb
    from linear_h200 import run_parallel
    from attnsearch.kernels import triton_linear
    log = os.path.join(outdir, "session.log")
    report = {"device": "cpu (smoke)" if smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "defaults": {g: triton_linear.default_config(g)
                                                                        for g in triton_linear.OPS},
              "candidates": {n: {"group": g, "config": c, "ops": list(o)} for n, (g, c, o) in CANDIDATES.items()},
              "phases": {}}
    try:
        import fla
        report["fla"] = getattr(fla, "__version__", "?")
    except ImportError:
        report["fla"] = None
    path = os.path.join(outdir, "session.json")

    def save():
        with open(path, "w") as f:
            json.dump(report, f, indent=1)

    def phase(name, t0):
        report["phases"][name] = round(time.time() - t0, 1)
        print(f"[{time.time() - t_start:6.1f}s] {name} done in {report['phases'][name]} s", flush=True)
        save()

    save()
    # A. gradient check and compilation, in parallel processes
    t0 = time.time()
    gc = os.path.join(HERE, "linear_gradcheck.py")
    tasks = []
    table_wanted = os.environ.get("LINEAR_TABLE", "1") != "0"  # 0: phases A and B only (candidates, no fla)
    if report["fla"] and not smoke and table_wanted:  # fla's autotuned compiles are the long pole: first
        for op in selected_ops():
            spec = dict(who="fla", ops=[op], B=2, H=16, K=128, T=1024)
            tasks.append((f"warm fla {op}", [__file__, "--task", json.dumps(spec)]))
    checks = []
    # LINEAR_BF16_ONLY=1: the checks in bf16 only (the benchmark's dtype: seconds to compile where fp32 took minutes)
    bf16_only = ["--bf16-only"] if os.environ.get("LINEAR_BF16_ONLY") == "1" and not smoke else []
    report["gradcheck_dtypes"] = "bf16" if bf16_only else "fp32, bf16"
    # each check's fp32 cases (compiles of minutes on the GPU machine) in a job of their own, started before the bf16
    # ones, so that a check's fp32 compiles do not wait for its bf16 cases
    parts = GC_PARTS if not bf16_only else (("", []),)
    fp32_checks = []
    for i, (name, only, cfg) in enumerate(GRADCHECKS):
        cfg_path = os.path.join(outdir, f"gc_cfg_{i}.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        for part, flags in parts:
            job = (f"gradcheck {i}{part}", [gc, os.path.join(outdir, f"gc_{i}{part}.json"),
                                            "--small" if smoke else "--bench-shape", "--only", only,
                                            "--configs", cfg_path] + (flags or bf16_only))
            (fp32_checks if part == "_fp32" else checks).append((name, job))
    warms = []
    shape = dict(B=1, H=2, K=32, T=80) if smoke else dict(B=1, H=2, K=128, T=256)
    for op in selected_ops():
        names = [n for n, (_g, _c, ops) in CANDIDATES.items() if op in ops]
        spec = dict(who="ours", ops=[op], candidates=names, **shape)
        warms.append((f"warm ours {op}", [__file__, "--task", json.dumps(spec)]))
    # started in this order: fla, the defaults' gradient checks (fp32 first), our candidates, the other paths' fp32
    # checks, then their bf16 ones
    default = lambda jobs, yes: [job for name, job in jobs if name.startswith("default") == yes]  # noqa: E731
    tasks += default(fp32_checks, True) + default(checks, True) + warms + default(fp32_checks, False) + \
        default(checks, False)
    # A gets what C (the table, ~90 s) and B (~15 s once compiled) leave, at most 115 s
    # LINEAR_A_MAX_S raises the cap where fla's autotuned compiles need it (GLA alone took > 170 s)
    limit_a = max(30.0, min(float(os.environ.get("LINEAR_A_MAX_S", 115)), left() - 110)) if not smoke else 1200
    report["compile_exit_codes"] = run_parallel(tasks, jobs, limit_a, log)
    results = []
    for i, (name, only, cfg) in enumerate(GRADCHECKS):
        for part, _flags in parts:
            code = report["compile_exit_codes"].get(f"gradcheck {i}{part}")
            what = f" ({part[1:]})" if part else ""
            try:
                with open(os.path.join(outdir, f"gc_{i}{part}.json")) as f:
                    got = json.load(f)["results"]
                results += [{**r, "path": name} for r in got]
                if code not in (0, 1):  # the job rewrites its file after every case: these are the ones it finished
                    results.append({"path": name, "case": only, "ok": False,
                                    "error": f"cut after {len(got)} cases{what} (exit {code})"})
            except (OSError, ValueError, KeyError):
                results.append({"path": name, "case": only, "ok": False, "error": f"no result{what} (exit {code})"})
    bad = [r for r in results if not r.get("ok")]
    report["gradcheck"] = {"all_ok": not bad, "n": len(results), "n_bad": len(bad),
                           "worst": max((r["worst"] for r in results if "worst" in r), default=None),
                           "bad": bad, "results": results}
    phase("A_gradcheck_and_compile", t0)
    print(f"gradcheck: {len(results) - len(bad)}/{len(results)} ok, worst {report['gradcheck']['worst']}",
          flush=True)
    for r in bad:
        print(f"  BAD {r.get('path')} {r.get('op')}:{r.get('gate')} {r.get('dtype')} gmin={r.get('gmin')} "
              f"{r.get('errors') or r.get('error')}", flush=True)

    # B. candidates at T=32768, the default beside each, same process
    t0 = time.time()
    B, H, K, T = (1, 2, 32, 80) if smoke else (2, 16, 128, 32768)
    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    timed = (lambda fn, x, bwd: lb.timed(fn, x, bwd, warmup=10, rep=50)) if not smoke else lb.cpu_timed
    report["sweep"] = []
    for op in selected_ops():
        if left() < 95 and not smoke:
            report["sweep_cut"] = f"stopped before {op}: {left():.0f} s left"
            break
        x = lb.make_inputs(op, B, T, H, K, K, device, dtype=dtype)
        for name, (_g, _c, ops) in CANDIDATES.items():
            if op not in ops:
                continue
            cfg = config_for(name, op)
            row = {"op": op, "candidate": name, "config": cfg, "T": T}
            for mode, bwd in (("fwd", False), ("fwdbwd", True)):
                row[f"{mode}_ms"], err = lb.attempt(timed, candidate_fn(lb, op, x, name), x, bwd)
                if err:
                    row[f"{mode}_error"] = err
            report["sweep"].append(row)
            print("sweep", json.dumps(row), flush=True)
            save()
        del x
    report["vs_default"] = compare_to_default(report["sweep"])
    report["vs_ungated"] = compare_to_ungated(report["sweep"])
    phase("B_candidates", t0)
    for name, rel in report["vs_default"].items():
        print(f"  {name:22s} time / default: {rel}", flush=True)
    for name, rel in report["vs_ungated"].items():  # target: <= 1.3
        print(f"  {name:22s} gated / ungated default: {rel}", flush=True)
    adopted_path = None
    if slots:
        adopted, report["adopt"] = adopt(slots, report["vs_default"], report["gradcheck"]["results"])
        report["adopted"] = adopted
        for pick in report["adopt"]:
            print(f"  adopt [{pick['slot']}] {pick['group']}: {pick['adopted']}  "
                  + ", ".join(f"{w['candidate']} mean {w['mean']} worst {w['worst']} gc {w['gradcheck']}"
                              for w in pick["scored"]), flush=True)
        print(f"  adopted for the table: {json.dumps(adopted)}", flush=True)
        if adopted:
            adopted_path = os.path.join(outdir, "adopted.json")
            with open(adopted_path, "w") as f:
                json.dump(adopted, f, indent=1)
        save()

    # C. the table beside fla with the committed defaults
    if smoke:
        report["table"] = "skipped in --smoke (needs CUDA)"
        t0 = time.time()
        report["kernel_profile"] = profile_kernels(report, lambda: True, "cpu", (1, 2, 32, 80), save)
        report["breakdown"] = []
        lb.run_breakdown(report, list(GROUP), 80, 1, 2, 32, 32, save, device="cpu", timer=_cpu_once)
        phase("D_breakdown", t0)
        return 0
    if not table_wanted:
        report["table"] = "skipped (LINEAR_TABLE=0)"
        save()
        return 0
    t0 = time.time()
    limit_c = max(10, int(left()))
    cmd = [sys.executable, os.path.join(HERE, "linear.py"), os.path.join(outdir, "table.json"),
           "--T", "32768,8192"] + ([] if os.environ.get("LINEAR_SDPA") == "1" else ["--no-sdpa"]) + [
           "--ops", ",".join(selected_ops())] + ([] if report["fla"] else ["--no-fla"]) + (
           ["--configs", adopted_path] if adopted_path else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    with open(log, "a") as logf:
        try:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, timeout=limit_c).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    report["table_exit"] = rc
    try:
        with open(os.path.join(outdir, "table.json")) as f:
            table = json.load(f)
        report["table"] = {"rows": table.get("rows"), "memory": table.get("memory")}
        lb.print_table(table)
    except (OSError, ValueError) as e:
        report["table"] = f"no table: {e}"
    phase("C_table", t0)

    # E. the adopted configs together (phase A checked each alone): bf16 gradient check, all cases
    if adopted_path and left() > 30:
        t0 = time.time()
        gc_out = os.path.join(outdir, "gc_adopted.json")
        cmd = [sys.executable, os.path.join(HERE, "linear_gradcheck.py"), gc_out, "--bench-shape", "--bf16-only",
               "--configs", adopted_path]
        with open(log, "a") as logf:
            try:
                rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    timeout=left() - 15).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        try:
            with open(gc_out) as f:
                got = json.load(f)["results"]
        except (OSError, ValueError, KeyError):
            got = []
        bad = [r for r in got if not r.get("ok")]
        report["gradcheck_adopted"] = {"exit": rc, "n": len(got), "n_bad": len(bad), "bad": bad,
                                       "worst": max((r["worst"] for r in got if "worst" in r), default=None)}
        print(f"gradcheck of the adopted configs (bf16): {len(got) - len(bad)}/{len(got)} ok, exit {rc}, "
              f"worst {report['gradcheck_adopted']['worst']}", flush=True)
        phase("E_gradcheck_adopted", t0)

    # D. where the time goes now: GPU time per kernel of one fwd+bwd (ours, and fla's where it ran in C),
    # then stage by stage along the default paths, at T=32768, while time is left
    t0 = time.time()
    report["kernel_profile"] = profile_kernels(report, lambda: left() > 12, "cuda", (2, 16, 128, 32768), save)
    phase("D_kernel_profile", t0)
    t0 = time.time()
    report["breakdown"] = []
    if left() > 20:
        try:
            lb.run_breakdown(report, selected_ops(), 32768, 2, 16, 128, 128, save, configs=report.get("adopted"))
        except Exception as e:  # the table and candidates above are what matter; keep them
            report["breakdown_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    else:
        report["breakdown_error"] = f"skipped: {left():.0f} s left"
    phase("D_breakdown", t0)
    return 0


def profile_kernels(report, go_on, device, shape, save):
    """linear.kernel_profile of ours (defaults) and of fla where its fwd+bwd ran in the table."""
    import torch

    import linear as lb
    B, H, K, T = shape
    table = report.get("table")
    rows = (table.get("rows") or []) if isinstance(table, dict) else []
    fla_ok = {r["op"] for r in rows if r.get("T") == T and r.get("fla_fwdbwd_ms")}
    out = []
    for op in selected_ops():
        makers = [("ours", lb.ours_fn)] + ([("fla", lb.fla_fn)] if op in fla_ok else [])
        x = lb.make_inputs(op, B, T, H, K, K, device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        for who, make in makers:
            if not go_on():
                out.append({"op": op, "who": who, "error": "skipped: out of time"})
                continue
            prof, err = lb.attempt(lambda: lb.kernel_profile(make(op, x), x, device=device))
            out.append({"op": op, "who": who, "T": T, **(prof or {}), **({"error": err} if err else {})})
            report["kernel_profile"] = out
            save()
            if prof:
                top = ", ".join(f"{k[:40]} {v:.3f}" for k, v in list(prof["kernels_ms"].items())[:6])
                print(f"profile {who} {op}: {prof['total_ms']:.3f} ms/call: {top}", flush=True)
        del x
    return out


def _cpu_once(fn):
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3




# the second target: a gated op within 1.3x of its ungated counterpart, both at their defaults
UNGATED = {"retention": "linear", "mamba2": "linear", "gla": "linear", "gated_delta": "delta"}


def compare_to_ungated(rows):
    """Per candidate (and the default): each gated op's fwd and fwd+bwd time over its ungated op's default time,
    where this run timed that default."""
    base = {r["op"]: r for r in rows if r["candidate"] == "default"}
    out = {}
    for r in rows:
        b = base.get(UNGATED.get(r["op"]))
        if not b:
            continue
        rel = {m: (round(r[f"{m}_ms"] / b[f"{m}_ms"], 3) if r.get(f"{m}_ms") and b.get(f"{m}_ms") else None)
               for m in ("fwd", "fwdbwd")}
        out.setdefault(r["candidate"], {})[r["op"]] = rel
    return out


def compare_to_default(rows):
    """Per candidate: its fwd and fwd+bwd time over the default's, per op it changes."""
    base = {r["op"]: r for r in rows if r["candidate"] == "default"}
    out = {}
    for r in rows:
        b = base.get(r["op"])
        if r["candidate"] == "default" or not b:
            continue
        rel = {m: (round(r[f"{m}_ms"] / b[f"{m}_ms"], 3) if r.get(f"{m}_ms") and b.get(f"{m}_ms") else None)
               for m in ("fwd", "fwdbwd")}
        out.setdefault(r["candidate"], {})[r["op"]] = rel
    return out


if __name__ == "__main__":
    sys.exit(main())
