"""Triton backend for chunkwise linear attention (every gate kind) and the (gated) delta rule.

Layout follows DESIGN.md: q, k [B, T, H, K], v [B, T, H, V], states [B, H, K, V]. The sequence is
cut into chunks of BT steps; chunk n's entering state is h_n.

Forward (linear attention)
  1. `_chunk_cumsum_kernel`: b = within-chunk cumulative log gate (fp32; scalar gates [B*H, T],
     per-channel [B,T,H,K]); for per-channel gates also a per-chunk flag: does b span at most
     GLA_SAFE_SPAN in every channel.
  2. `_state_fwd_kernel` (sequential over chunks, parallel over K/V tiles and B*H): stores h_n
     [B, H, NT, K, V] and the final state.
  3. `_out_fwd_kernel` (parallel over chunks): o = scale * ((q * exp(b)) h_n + A v) where A is the
     causal intra-chunk attention with decay exp(b_i - b_j). For per-channel gates A is one matmul
     of q exp(b - r) and k exp(r - b) on flagged chunks (r: the middle of each channel's span, so
     both factors stay within exp(+-40)); only chunks of stronger decay have A built by
     `_gla_intra_kernel` from sub-blocks of 16 rows (below).
Fused forward (FUSED_FWD, no or scalar gate): `_fused_fwd_kernel` does 2 and 3 in one sequential pass, the state
held in registers: per program a V tile and all of K, per chunk q k^T, o = (q exp(b)) h_n + A v and the state
update. An inference forward (no gradient wanted) writes only o; a forward that a backward follows also stores
h_n. A scalar gate's decay is folded onto the rows of v and o (exp(r - b_j), exp(b_i - r)) when every chunk of
the sequence spans at most GLA_SAFE_SPAN; else one exponential per score.
Gate paths (config keys, see CONFIG_SPACE): with PREP_SCALAR / PREP_CHANNEL a chunk-parallel
`_gate_prep_kernel` replaces step 1 and also writes the operand each sequential scan would otherwise
decay inside its loop (k exp(b_last - b) for the forward scan, q exp(b) for the backward scan) and
exp(b_last) per chunk, so that a scan's loop only rescales its state (by a factor loaded one chunk
ahead). With GLA_OUT_FUSED, per-channel gates take `_out_chunk_kernel` for step 3: one program per chunk
forms b from the raw gate in registers and A once, then loops over V tiles; the fp32 b is then written
only for chunks of strong decay (what `_gla_intra_kernel` reads).
Delta rule: the UT transform first solves (I + tril(beta K K^T * decay)) for w and u per chunk:
`_ut_diag_kernel` inverts the 16 x 16 diagonal blocks by forward substitution (one warp per block),
`_wy_fwd_kernel` combines them with a few matmuls (block Neumann product) and forms w, u; the state
scan then uses v_new = u - w h_n and the output kernel runs on v_new.

Tunables come in four families (forward scan, backward scan, forward output, backward gradients;
FAMILIES), each with its own tiles, warps and stages, so that each can be tuned alone and the winners
combined. A fixed per-head decay g [H] that needs no gradient (RetNet) takes no pass over the gate at
all: the kernels form a chunk's cumulative decay from the row index (`_scalar_decay`).

Backward mirrors this: `_state_bwd_kernel` scans dh backwards and stores, per chunk, the
gradient G_n of the state *leaving* chunk n; then one parallel kernel per chunk produces
dq/dk/dv (and dbeta, dg). Only the inputs and the per-chunk states h are saved for the backward;
cumulative gates, A, w, u and v_new are recomputed.

Numerics: gates are log-decays (<= 0). Only non-positive differences are exponentiated:
exp(b_i), exp(b_last - b_j), exp(b_i - b_j) for j <= i (masked to -inf otherwise). For
per-channel gates, exp(b_i - b_j) factorises safely over a whole chunk only while the gate's span
is bounded (the flagged chunks above); otherwise rows are taken in sub-blocks of 16: between sub-blocks the product is split at the sub-block boundary r
(exp(b_i - b_r) * exp(b_r - b_j), both factors <= 1), inside the 16 x 16 diagonal block it is
formed elementwise. A gate of -20 per step therefore underflows to 0 instead of overflowing.

Gate gradients are formed chunk-locally from terms that each carry their own decay, never as a
difference of large sums: for a step s of chunk n,
  dg_s = sum_{i>=s} q_i.dq_inter_i + sum_{i>=s, j<s} dA_ij A_ij + exp(b_last) <h_n, G_n> + sum_{j<s} k_j.dk_inter_j
(per channel for GLA, where the intra term is taken as q.dq_offdiag - k.dk_offdiag inside the chunk;
the delta rule adds the UT-transform terms). The textbook identity dg = revcumsum(q dq - k dk) over the
whole sequence is exact in exact arithmetic but cancels O(1) terms down to O(exp(g)) results, which
lost all precision at g = -20 on the GPU (measured: relative error up to 3e2 for a fixed [H] gate).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

OPS = ("linear_attention", "delta_rule")
CHUNK_SIZES = (16, 32, 64, 128)
_TILES = (16, 32, 64, 128, 256)
# Three kernel families, each with its own keys, so that each can be tuned alone:
#   scans (state forward, dh backward):  BLOCK_K (linear only), BLOCK_V, num_warps, num_stages
#   forward output (per chunk):          OUT_BLOCK_K, OUT_BLOCK_V, out_num_warps, out_num_stages
#   backward per-chunk gradients:        BWD_BLOCK_V, bwd_num_warps, bwd_num_stages
_COMMON = {
    "BLOCK_V": _TILES,
    "num_warps": (1, 2, 4, 8, 16),
    "num_stages": (1, 2, 3, 4),     # software pipelining of the chunk loops
    "OUT_BLOCK_K": _TILES,
    "OUT_BLOCK_V": _TILES,
    "out_num_warps": (1, 2, 4, 8, 16),
    "out_num_stages": (1, 2, 3, 4),
    "BWD_BLOCK_V": _TILES,
    "GATED_BWD_BLOCK_V": (0,) + _TILES,
    "bwd_num_warps": (2, 4, 8, 16),
    # the per-chunk backward's warps for gated inputs (0: bwd_num_warps)
    "gated_bwd_num_warps": (0, 2, 4, 8, 16),
    "bwd_num_stages": (1, 2, 3, 4),
    # the backward state scan's own tile and launch (0: the forward scan's BLOCK_V / num_warps / num_stages);
    # for the delta rule it carries three matmuls a chunk and five input tiles against the forward's two and three
    "SCAN_BWD_BLOCK_V": (0,) + _TILES,
    "scan_bwd_num_warps": (0, 1, 2, 4, 8, 16),
    "scan_bwd_num_stages": (0, 1, 2, 3, 4),
}
# Gate paths (each selectable so that one GPU run can time old and new side by side):
#   PREP_SCALAR  scalar gates ([H], [B,T,H]): 0 = the sequential scans load the gate and scale their operand
#                inside the loop; 1 = a chunk-parallel pass precomputes the decayed operand of the backward
#                scan (q exp(b)) and exp(b_last) per chunk, so that the scan only rescales its state;
#                2 = the forward scan's keys (k exp(b_last - b)) too (for the delta rule the UT-transform
#                kernel writes them, no extra pass).
#   SCAN_SCALE16 scalar gates, bf16 inputs: 1 = the scans' in-loop row factors (a fixed decay always; other
#                scalar gates where PREP_SCALAR leaves them in the loop) rounded to bf16 and applied
#                by packed 16-bit multiplies (`_scale_rows`). H100 (session 10): RetNet fwd 1.018x, fwd+bwd
#                0.998x of 0; with PREP_SCALAR 0, Mamba-2 fwd+bwd 1.021x: left at 0.
#   PREP_CHANNEL per-channel gates (GLA): 1 = the same for both scans; the pass replaces the cumulative-gate
#                kernel, and the fp32 cumulative gate is written only where the backward needs it.
#   GLA_OUT_FUSED per-channel gates: 1 = the forward output takes the raw gate and forms the chunk-local
#                cumulative gate in registers, one program per chunk forms A once and loops over V tiles
#                (0: A formed again for every V tile from a stored fp32 cumulative gate).
#   GATED_BWD_BLOCK_V  V tile of the per-chunk backward kernels for gated inputs (0: BWD_BLOCK_V). The gate
#                terms take registers: at 64 x 128 tiles and 8 warps the scalar-gated kernel spilled on sm_90
#                where the ungated one did not, so the two may want different tiles.
#   WY_BWD_SPLIT the delta rule's backward through the UT transform: 0 = `_delta_bwd_wy_kernel` (sm_90, 8 warps:
#                230-255 registers, one block per SM); 1 = `_delta_bwd_dw_kernel` (dw = -dv_new h^T), then
#                `_delta_bwd_wy_split_kernel` (the rest, over V tiles and K tiles of 16, Tm in the inputs' dtype):
#                79-128 registers at 8 warps, V tiles 16-32, 1-3 stages, two blocks per SM, about half the
#                instructions; 32 KB more traffic per chunk than 0's 144 KB (bf16, chunk 64, K = V = 128: dv_new
#                read twice and dw written and read, +48 KB; Tm in bf16, -16 KB). H200 (session 8): fwd+bwd
#                1.08x (gated 1.13x) of 0, so 0 stays the default.
#   DG_ONE_SUM   linear attention, data-dependent scalar gate (Mamba-2): 1 = the per-chunk backward sums the gate
#                gradient's suffix and prefix terms in one masked row sum (sm_90, 8 warps: 2,776 instructions
#                against 2,984; H100: Mamba-2 fwd+bwd 0.979x; default, with DG_WEAK 1); 0 = a reverse scan and a
#                masked prefix sum. (The delta rule's UT-transform backward spilled more with it: 232 against 52
#                bytes.)
#   DG_WEAK      linear attention, Mamba-2: 1 = a chunk whose steps decay by at most WEAK_STEP (2) on average takes its
#                gate gradient in fla's form, the suffix sum of q.dq - k.dk of the final gradients (no second
#                q k^T, no [BT, BT] products or column sums), other chunks the exact chunk-local form (a branch
#                per chunk, both forms in one kernel); 2 = the same from two launches, each kernel compiled with
#                one form (the programs of the other kind return at once). fla's form loses the small terms next
#                to the diagonal's under strong decay (relative error 42 at steps of -20 on the CPU), hence the
#                bound. sm_90, 8 warps: 1 = 3,304 instructions, 20 B spilled; 2 = 2,544 for weak chunks, no
#                spills, 3,016 for the others; exact form alone (0) 2,984. H100 (session 10, with DG_ONE_SUM):
#                Mamba-2 fwd+bwd 1 0.977x, 2 0.999x of neither, DG_ONE_SUM alone 0.979x: 1 is the default.
#   BWD_KDEC     linear attention, scalar gates (RetNet, Mamba-2): 1 = the per-chunk backward multiplies the keys'
#                decay exp(b_last - b) into k once (rounded to the inputs' dtype, as the per-channel gate does) so
#                that dv = A^T do + k_dec G^T is one accumulator; 0 = k G^T per V tile in its own accumulator, scaled
#                by the decay. sm_90, 8 warps, Mamba-2 (DG_WEAK 1, DG_ONE_SUM 1): V loop 359 against 426
#                instructions, 36 against 40 tensor-core ops, 116 against 20 bytes spilled outside the loop; RetNet
#                278 against 341. H100 (session 11, T=32768): fwd+bwd RetNet 1.009x, Mamba-2 1.032x of 0: left at 0.
#   HEADS_FIRST  linear attention: 1 = the per-chunk backward and the backward's gate pass launch on a (B * H, NT) grid,
#                so that the programs in flight are the heads of neighbouring chunks and read contiguous rows of
#                q, k, v and do ([B, T, H, K]: one token's heads lie together); 0 = (NT, B * H), one head's chunks
#                together, each reading rows H * K elements apart.
#   DG_PREFIX    linear attention, Mamba-2: 1 = the gate gradient's state term exp(b_last) <h_n, G_n> from a prefix sum
#                over chunks of per-chunk sums the per-chunk backward forms anyway (`_add_state_term`), instead of an
#                h^T G product per V tile (12 of its 40 sm_90 tensor-core ops, a [BV, BV] fp32 accumulator). A sum over
#                the sequence of terms that cancel when the decay is strong: its error is absolute, about fp32's
#                rounding of the largest per-chunk sums, beside a gate gradient of the size of its chunk's own terms.
#   prep_bwd_num_warps  warps of the backward's gate pass (PREP_SCALAR / PREP_CHANNEL); 0 = 4 for scalar gates, 8 for
#                per-channel ones.
#   GLA_BWD_SPLIT per-channel gates: 1 = the per-chunk backward from two launches, one compiled for chunks flagged
#                safe (A by one matmul of the split factors) and one for the others (A from `_gla_intra_kernel`),
#                the programs of the other kind returning at once; 0 = one kernel that forms both and masks.
#   GLA_BWD_RELOAD per-channel gates: 1 = the per-chunk backward loads q, k and the gate again after its V loop
#                and forms the split-decay factors again, instead of keeping these [BT, K] tiles live through
#                the loop (sm_90, 8 warps, V tiles of 64: spill stores 548 against 1,068 bytes, 6,552 against
#                6,496 instructions; H100: GLA fwd+bwd 0.912x alone, 0.909x with GLA_BWD_SPLIT, the default).
#   SAVE_TM      the delta rule: 1 = a forward that a backward follows stores Tm = (I + L)^-1 of every chunk
#                ([B*H, T, BT] fp32: half the bytes of the bf16 per-chunk states at K = V = 128, chunk 64; fla
#                keeps its A too), and the backward forms w and u from it instead of inverting again (no
#                `_ut_diag_kernel`, no doubling matmuls); 0 = the backward forms Tm again.
#   SCAN_BWD_SPLIT_K the delta rule's backward scan: 1 = `_delta_state_bwd_kernel`, the state gradient held as
#                two halves of K ([K / 2, BV] each, q and w loaded transposed; K >= 32), 0 = `_state_bwd_kernel`'s
#                one [K, BV] tile. H200, K = V = 128, bf16, ungated, kernel alone: 0.772 against 1.285 ms (fla's
#                0.687), results/h200_session8/probe.
#   OUT_V_LOOP   no or scalar gate (and the delta rule): 1 = the forward output kernel runs one program per
#                chunk that forms A once (all of K) and loops over V tiles of OUT_BLOCK_V, as GLA_OUT_FUSED
#                does for per-channel gates (0: a program per V tile, A formed again in each).
#   FUSED_FWD    no or scalar gate, linear attention and the delta rule: `_fused_fwd_kernel` runs the (delta
#                rule: after the UT transform) scan and the output in one
#                sequential pass (FUSED_BLOCK_V, fused_num_warps, fused_num_stages; fused_gated_num_stages for
#                scalar gates, 0 = fused_num_stages): 0 = never (scan, then the chunk-parallel output), 1 = when no
#                gradient is wanted (inference: h_n is never written), 2 = that, and also ungated forwards that
#                a backward follows (storing h_n for it, as the scan does), 3 = every forward.
#                FUSED_FOLD (scalar gates): 1 = a sequence whose every chunk's decay spans at most GLA_SAFE_SPAN
#                takes the decay as exp(b_i - r) on o's rows and exp(r - b_j) on v's rows (no [BT, BT] exponentials);
#                2 = the same, but a fixed decay with (BT - 1) |g_h| <= GLA_SAFE_SPAN / 2 pivots at the chunk's end
#                (H200: RetNet fwd 0.978x / 0.975x of 1 in sessions 7 / 8, gradient-checked there in session 8);
#                3 = every scalar gate pivots at the chunk's end and applies the chunk's decay to the state before
#                q h_n: a fixed decay as in 2 on full chunks (a shorter last chunk takes the exact loop), a
#                data-dependent gate on sequences whose chunks all span at most GLA_SAFE_SPAN / 2, FOLD 1's loop for
#                those within GLA_SAFE_SPAN (the flag's levels; before session 10 they took the exact loop, and the
#                benchmark's logsigmoid(randn) gates, about 50 per chunk of 64, made FOLD 3 / 4 1.45x FOLD 2 in
#                Mamba-2's forward on the H100) (sm_90, Triton 3.9, inference loops: RetNet 717 instructions
#                against FOLD 2's 766, Mamba-2 780 against 827, gated delta 907 against 924, ungated 575);
#                4 = 3 with the chunks' decays multiplied into a scalar that the state takes back only when it falls
#                below LAZY_MIN (a branch the loop skips otherwise): sm_90 loops RetNet 703 (735 with the skipped
#                branch), Mamba-2 764 (796), gated delta 904 against FOLD 3's 717, 780, 907; for a data-dependent
#                gate the state takes it back before a chunk that would push it below 1 / LAZY_FACTOR_4, with the
#                chunk's first step (session 10: a first step of -100 had underflowed the scalar, NaN out);
#                5 = 4 with the data-dependent bound LAZY_SPAN (72) in place of GLA_SAFE_SPAN / 2 (the benchmark's
#                gates span 61-72 per sequence, so 3 / 4 fold none of them), factors within exp(+-72);
#                0 = one exponential per score always (so are fp16 inputs: the scaled v would overflow fp16).
#                FUSED_PREFETCH (data-dependent scalar gates): 1 = b, b_0 and b_last of chunk n + 1 are loaded in
#                iteration n (H200: Mamba-2 fwd 0.955x, gated delta fwd 0.99x of 0).
#                FUSED_SPLIT_K: 1 = the state held as two halves of K (H200: linear fwd 1.10x, delta 1.03x,
#                gated delta 0.96x of 0; not the default).
#                FUSED_SCALE16 (scalar gates, bf16 inputs): 1 = v's row factors rounded to bf16 and
#                applied by packed 16-bit multiplies (`_scale_rows`; sm_90 inference loops, without / with it:
#                RetNet FOLD 2 766 / 728, FOLD 3 717 / 654; Mamba-2 FOLD 2 827 / 778, FOLD 3 780 / 735, FOLD 4
#                796 / 733 with its skipped branch; gated delta FOLD 2 924 / 933, FOLD 3 907 / 878).
#                H100, session 11 (results/h100_session11/call1, T=32768, over the then default FUSED_FWD 2 +
#                FOLD 2 in one process; "train": FUSED_FWD 3): FOLD 5 + SCALE16 + train RetNet fwd 0.970x, f+b
#                0.901x, Mamba-2 0.960x / 0.949x; FOLD 5 + train 0.991x / 0.897x, 0.975x / 0.952x; FOLD 4 + train
#                0.991x / 0.894x, 1.017x / 0.930x; FOLD 5 alone (inference loop) Mamba-2 fwd 0.973x; gated delta
#                FOLD 5 1.043x / 1.010x, FOLD 4 0.999x / 1.000x (the delta rule keeps FOLD 2). Linear attention's
#                defaults since then: FUSED_FWD 3, FOLD 5, SCALE16 1. Gradient-checked there (fp32, bf16, g down to
#                -20): FOLD 4 / 5 + train linear attention, SCALE16 with them in bf16.
_GATE_PATHS_SCAN = {"PREP_SCALAR": (0, 1, 2), "SCAN_SCALE16": (0, 1)}
_FUSED = {"FUSED_FWD": (0, 1, 2, 3), "FUSED_BLOCK_V": _TILES, "fused_num_warps": (1, 2, 4, 8, 16),
          "fused_num_stages": (1, 2, 3, 4), "fused_gated_num_stages": (0, 1, 2, 3, 4), "FUSED_FOLD": (0, 1, 2, 3, 4, 5),
          "FUSED_PREFETCH": (0, 1), "FUSED_SPLIT_K": (0, 1), "FUSED_SCALE16": (0, 1)}
FAMILIES = {"scan": ("BLOCK_K", "BLOCK_V", "num_warps", "num_stages", "PREP_SCALAR", "PREP_CHANNEL", "SCAN_SCALE16"),
            "out": ("OUT_BLOCK_K", "OUT_BLOCK_V", "out_num_warps", "out_num_stages", "GLA_OUT_FUSED", "OUT_V_LOOP"),
            "bwd": ("BWD_BLOCK_V", "bwd_num_warps", "bwd_num_stages", "GATED_BWD_BLOCK_V", "gated_bwd_num_warps",
                    "WY_BWD_SPLIT", "DG_ONE_SUM", "GLA_BWD_RELOAD", "DG_WEAK", "GLA_BWD_SPLIT", "BWD_KDEC",
                    "HEADS_FIRST", "prep_bwd_num_warps", "DG_PREFIX"),
            "scan_bwd": ("SCAN_BWD_BLOCK_V", "scan_bwd_num_warps", "scan_bwd_num_stages", "SCAN_BWD_SPLIT_K"),
            "fused": tuple(_FUSED)}
CONFIG_SPACE = {
    "linear_attention": {"BLOCK_K": _TILES, **_COMMON,   # BLOCK_K: K tile of the state scans
                         **_GATE_PATHS_SCAN, "PREP_CHANNEL": (0, 1), "GLA_OUT_FUSED": (0, 1), "OUT_V_LOOP": (0, 1),
                         **_FUSED, "DG_ONE_SUM": (0, 1), "GLA_BWD_RELOAD": (0, 1),
                         "DG_WEAK": (0, 1, 2), "GLA_BWD_SPLIT": (0, 1), "BWD_KDEC": (0, 1), "HEADS_FIRST": (0, 1),
                         "prep_bwd_num_warps": (0, 2, 4, 8), "DG_PREFIX": (0, 1)},
    "delta_rule": {**_COMMON, **_GATE_PATHS_SCAN, "OUT_V_LOOP": (0, 1), **_FUSED,  # (the delta rule's scans hold all of K)
                   "WY_BWD_SPLIT": (0, 1), "SCAN_BWD_SPLIT_K": (0, 1), "SAVE_TM": (0, 1)},
}
SUB_BLOCK = 16  # rows per sub-block for per-channel gates (diagonal blocks formed elementwise)
# Per-channel gates: a chunk whose cumulative gate spans at most this (in every channel) forms its
# intra-chunk A by one matmul of q exp(b - r) and k exp(r - b), both factors within exp(+-40), so
# that no product of two of them overflows fp32/bf16; chunks of stronger decay take the sub-block
# path. `_split_decay` clamps its exponents at 40 (= half of this), which changes nothing on safe chunks.
GLA_SAFE_SPAN = 80.0
# FUSED_FOLD 4: the scale below which the fused pass multiplies its pending decay into the state (2^-20): v's rows
# then take factors up to exp(GLA_SAFE_SPAN / 2) / LAZY_MIN (2.5e23), the state up to its true size / LAZY_MIN
LAZY_MIN = tl.constexpr(2.0 ** -20)
# FUSED_FOLD 5: a data-dependent sequence whose chunks span at most LAZY_SPAN takes FOLD 4's loop, and the state's
# pending decay c goes back into it before a chunk n where c exp(b_last(n)) would fall below exp(-LAZY_SPAN): v's
# factors exp(-b_j) / c and o's exp(b_i) c then stay within exp(+-LAZY_SPAN) (1.9e31 at 72, against FOLD 4's 2.5e23),
# and q k^T (v exp(LAZY_SPAN)) over 64 rows stays below fp32's 3.4e38 for |q.k| |v| up to 2.8e5. 72 covers the
# benchmark's logsigmoid(randn) steps (the widest chunk of 64 rows per sequence spans 61-72 at T = 32768).
LAZY_SPAN = 72.0
# the bounds on a row factor that the loops compare with: FOLD 5's, and FOLD 4's
LAZY_FACTOR_MAX = tl.constexpr(math.exp(LAZY_SPAN))
LAZY_FACTOR_4 = tl.constexpr(math.exp(GLA_SAFE_SPAN / 2) / LAZY_MIN.value)
# DG_WEAK: the largest mean per-step decay (-g) of a chunk for which Mamba-2's gate gradient takes fla's cheaper
# form. CPU, fp32, relative error of dg: steps all about -g, chunk 16: 1.4e-6 at 1, up to 6.7e-6 at 2, 3.3e-5 at 4
# and 42 at 20 (all of its terms cancel there), against 2e-7 - 1e-6 for the exact form; chunk 64, steps of mixed
# size: logsigmoid(randn) (mean -0.8, the benchmark's) 1.6e-6, -U(0, 6) 4.8e-6, logsigmoid(randn - 4) 1.2e-5,
# against 1e-6 - 5.5e-6 for the exact form. What fails is a chunk where nearly every step is strong.
WEAK_STEP = tl.constexpr(2.0)


def default_config(op: str, device=None) -> dict:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    # Winners of the H200 sweep (benchmarks/linear_h200.py, results/linear_h200.json; bf16, B=2, H=16,
    # K=V=128, T=32768, Triton 3.6): one kernel family varied at a time around the former defaults
    # (all families at 2 stages, output tiles 64 x 64 / 64 x 32). Against those: linear fwd 0.98 -> 0.78 ms,
    # fwd+bwd 2.74 -> 2.22 ms; delta fwd 2.15 -> 1.69 ms, fwd+bwd 8.14 -> 6.89 ms.
    # Gradient-checked on the H200 with these configs (fp32 and bf16, g down to -20): the per-channel gate
    # and the ungated delta rule. fp32 inputs run every family at <= 2 stages (see `_prepare`).
    # Gate paths (PREP_*, GLA_OUT_FUSED): chosen from sm_90 SASS compiled on a CPU (benchmarks/linear_sass.py,
    # Triton 3.9), NOT yet timed on a GPU (benchmarks/linear_session.sh times old and new side by side): the
    # sequential loops of the scans shrink from 1164 / 1118 instructions (per-channel gate, fwd / bwd) to
    # 260 / 290, scalar gate 428 / 480 -> 253 / 283 (ungated 213 / 244), gated delta 830 / 1292 (15 spill loads)
    # -> 520 / 643 (ungated 484 / 639). Linear attention's scalar gate takes the pass for the backward scan
    # only (PREP_SCALAR 1): its forward scan lost only ~10% to the gate, less than the extra pass costs.
    # FUSED_FWD 2 (H200, session 7, results/h200_session7/fused_run*; times over the scan + output path at T=32768):
    # no gate fwd 0.686x, fwd+bwd 0.948x (4 stages); RetNet fwd 0.888x (3 stages, fold), fwd+bwd 1.003x; Mamba-2 fwd
    # 0.99x, fwd+bwd 1.04x: gated forwards followed by a backward keep the two-kernel path. V tiles of 16 / 64 and
    # 8 warps were slower (0.90-1.8x); without the fold a gated pass took 1.33-1.47x.
    # Delta rule FUSED_FWD 3 (results/h200_session7/delta_fused, T=32768): delta fwd 0.858x, fwd+bwd 0.985x; gated
    # delta fwd 0.934x, fwd+bwd 0.995x at 3 stages (4 stages 0.88x / 0.98x, 2 stages 1.08x).
    # Session 8 (results/h200_session8, T=32768, fwd+bwd over the alternative in one process): delta rule
    # SCAN_BWD_SPLIT_K 1 0.914x (gated 0.935x), SAVE_TM 1 0.942x (gated 0.943x), bwd_num_warps 4 0.944x of 8 (gated
    # 0.961x; BWD_BLOCK_V 64 at 8 warps 0.948x, 4 stages 0.981x, 2 stages 1.11x; WY_BWD_SPLIT 1.08x, 1.13x gated).
    # Gated inputs keep 8 warps (gated_bwd_num_warps): their H200 gradient check at 4 warps did not finish within the
    # session (the fp32 case compiles for minutes), and the gate is where Triton 3.6 on Hopper miscompiled fla.
    # OUT_V_LOOP 1 (linear attention): Mamba-2's forward 0.982x / 0.98x of OUT_V_LOOP 0 on the H200 (sessions 3
    # and 6), linear and RetNet within 0.5% either way (results/h200_session6).
    # Session 10 (H100, results/h100_session10/call1, T=32768, fwd+bwd over the previous default in one process,
    # gradient-checked there in fp32 and bf16, and together in bf16): GLA_BWD_SPLIT 1 + GLA_BWD_RELOAD 1 0.909x
    # (RELOAD alone 0.912x, SPLIT alone 1.032x); Mamba-2 DG_WEAK 1 + DG_ONE_SUM 1 0.977x (DG_ONE_SUM alone 0.979x,
    # DG_WEAK 2 0.999x): the pair the run adopted and tabled (results/h100_session10/call1/table.json).
    # gated_bwd_num_warps 4 measured 1.032x there (0.96x on the H200 in session 8): gated inputs keep 8.
    # Session 11 (H100, results/h100_session11/call1): linear attention's scalar gates take the fused pass in training
    # too (FUSED_FWD 3), FUSED_FOLD 5 and FUSED_SCALE16 1 (RetNet fwd 0.970x, fwd+bwd 0.901x; Mamba-2 0.960x / 0.949x
    # of FUSED_FWD 2 + FOLD 2). BWD_KDEC 1 measured RetNet fwd+bwd 1.009x, Mamba-2 1.032x there: left at 0.
    if op == "linear_attention":
        return {"BLOCK_K": 64, "BLOCK_V": 64, "num_warps": 4, "num_stages": 3,
                "OUT_BLOCK_K": 128, "OUT_BLOCK_V": 64, "out_num_warps": 4, "out_num_stages": 2,
                "BWD_BLOCK_V": 64, "bwd_num_warps": 8, "gated_bwd_num_warps": 0, "bwd_num_stages": 3,
                "PREP_SCALAR": 1, "SCAN_SCALE16": 0, "PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1, "GATED_BWD_BLOCK_V": 0,
                "OUT_V_LOOP": 1, "SCAN_BWD_BLOCK_V": 0, "scan_bwd_num_warps": 0, "scan_bwd_num_stages": 0,
                "FUSED_FWD": 3, "FUSED_BLOCK_V": 32, "fused_num_warps": 4, "fused_num_stages": 4,
                "fused_gated_num_stages": 3, "FUSED_FOLD": 5, "FUSED_PREFETCH": 1, "FUSED_SPLIT_K": 0,
                "FUSED_SCALE16": 1, "DG_ONE_SUM": 1, "GLA_BWD_RELOAD": 1, "DG_WEAK": 1,
                "GLA_BWD_SPLIT": 1}
    return {"BLOCK_V": 32, "num_warps": 4, "num_stages": 3,
            "OUT_BLOCK_K": 128, "OUT_BLOCK_V": 64, "out_num_warps": 4, "out_num_stages": 2,
            "BWD_BLOCK_V": 32, "bwd_num_warps": 4, "gated_bwd_num_warps": 8, "bwd_num_stages": 3, "PREP_SCALAR": 2,
            "SCAN_SCALE16": 0,
            "GATED_BWD_BLOCK_V": 0,
            "OUT_V_LOOP": 0, "SCAN_BWD_BLOCK_V": 0, "scan_bwd_num_warps": 0, "scan_bwd_num_stages": 0,
            "WY_BWD_SPLIT": 0, "SCAN_BWD_SPLIT_K": 1, "SAVE_TM": 1, "FUSED_FWD": 3, "FUSED_BLOCK_V": 32,
            "fused_num_warps": 4, "fused_num_stages": 3, "fused_gated_num_stages": 3, "FUSED_FOLD": 2,
            "FUSED_PREFETCH": 1, "FUSED_SPLIT_K": 0, "FUSED_SCALE16": 0}


def validate_config(op: str, config: dict, chunk_size: int = 64, **ctx) -> None:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    if chunk_size not in CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {CHUNK_SIZES} for the triton backend, got {chunk_size}")
    space = CONFIG_SPACE[op]
    for key, value in config.items():
        if key not in space:
            raise ValueError(f"unknown triton config key {key!r} for {op} (allowed: {', '.join(sorted(space))})")
        if value not in space[key]:
            raise ValueError(f"{op} triton config {key}={value!r} not in {list(space[key])}")
    tile = config.get("BLOCK_K", 64) * config.get("BLOCK_V", 64)
    if op == "linear_attention" and tile > 128 * 128:
        raise ValueError(f"BLOCK_K * BLOCK_V must be <= {128 * 128} (register budget), got "
                         f"{config['BLOCK_K']} * {config['BLOCK_V']}")
    for key in ("BLOCK_V", "OUT_BLOCK_V", "BWD_BLOCK_V", "GATED_BWD_BLOCK_V", "SCAN_BWD_BLOCK_V"):
        if chunk_size == 128 and config.get(key, 64) > 128:
            raise ValueError(f"{key} must be <= 128 with chunk_size=128 (register budget)")
    out_tile = config.get("OUT_BLOCK_K", 64) * config.get("OUT_BLOCK_V", 64)
    if out_tile > 128 * 128:
        raise ValueError(f"OUT_BLOCK_K * OUT_BLOCK_V must be <= {128 * 128} (register budget), got "
                         f"{config['OUT_BLOCK_K']} * {config['OUT_BLOCK_V']}")


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _chunk_cumsum_kernel(g_ptr, b_ptr, flag_ptr, T, NT, H, D: tl.constexpr, BT: tl.constexpr,
                         BD: tl.constexpr, VEC: tl.constexpr, FLAG: tl.constexpr, SAFE: tl.constexpr,
                         LEVELS: tl.constexpr = False, TOP: tl.constexpr = 40.0):
    """b = cumulative sum of g within each chunk, in fp32. FLAG, per-channel gates: flag[bh, n] = 1 when
    every channel's b spans at most SAFE inside the chunk, so that A can be formed by one matmul of
    q exp(b - r) and k exp(r - b) with r the middle of the span (both factors within exp(+-SAFE/2)).
    FLAG, scalar gates: flag[bh] = 1 when that holds for every chunk of the sequence (`_fused_fwd_kernel`);
    LEVELS (FUSED_FOLD 3 - 5): the sequence's level instead, 2 when every chunk spans at most TOP (FOLD 3 / 4's
    end pivot: SAFE / 2; FOLD 5: LAZY_SPAN), 1 when at most SAFE (FOLD 1's middle pivot), else 0."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    tok = (bb * T + rows).to(tl.int64) * H + hh
    if VEC:
        cols = tl.arange(0, BD)
        offs = tok[:, None] * D + cols[None, :]
        mask = (rows < T)[:, None] & (cols < D)[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0)
        tl.store(b_ptr + offs, _cumsum_rows(g, BT), mask=mask)
        if FLAG:
            tl.store(flag_ptr + bh.to(tl.int64) * NT + n, _safe_chunk(g, BT, SAFE))
    else:
        mask = rows < T
        g = tl.load(g_ptr + tok, mask=mask, other=0).to(tl.float32)
        tl.store(b_ptr + _srow(bh, rows, T), tl.cumsum(g, axis=0), mask=mask)
        if FLAG:  # flag[bh] (set to 1, LEVELS 2, beforehand) drops to the level of the sequence's widest chunk
            a = tl.sum(tl.where(tl.arange(0, BT) >= 1, tl.abs(g), 0), axis=0)
            level = (a <= SAFE).to(tl.int32)
            if LEVELS:
                level += (a <= TOP).to(tl.int32)
            tl.atomic_min(flag_ptr + bh, level)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _gate_prep_kernel(g_ptr, x_ptr, b_ptr, flag_ptr, xd_ptr, d_ptr, T, NT, H, K: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, VEC: tl.constexpr, KEYS: tl.constexpr, STORE_B: tl.constexpr,
                      SAFE: tl.constexpr, HEADS_FIRST: tl.constexpr = False):
    """One chunk, chunk-parallel, so that the sequential scans carry no gate tile through their loop:
    b = within-chunk cumulative gate (fp32), d = exp(b_last) per chunk ([B*H, NT] or, VEC, [B*H, NT, K]),
    xd = x exp(b_last - b) (KEYS: keys as they enter the next state) or x exp(b) (queries reading the
    entering state), in x's dtype, the same rounding as the in-loop path. VEC also writes the chunk's safe
    flag (GLA_SAFE_SPAN). STORE_B: 0 no b, 1 b of unsafe chunks only (what `_gla_intra_kernel` reads),
    2 all of b. HEADS_FIRST: see `_chunk_and_head`."""
    n, bh = _chunk_and_head(HEADS_FIRST)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    is_last = rows == tl.minimum(n * BT + BT, T) - 1
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m2 = rmask[:, None] & kmask[None, :]
    x = tl.load(x_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
    if VEC:
        g = tl.load(g_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
        b = _cumsum_rows(g, BT)
        b_last = tl.sum(g.to(tl.float32), axis=0)  # rows past T hold 0
        safe = _safe_chunk(g, BT, SAFE)
        tl.store(flag_ptr + bh.to(tl.int64) * NT + n, safe)
        if STORE_B == 2:
            tl.store(b_ptr + tok[:, None] * K + kk[None, :], b, mask=m2)
        elif STORE_B == 1:
            unsafe = (kk * 0 + safe) == 0  # broadcast: masks take no scalars
            tl.store(b_ptr + tok[:, None] * K + kk[None, :], b, mask=m2 & unsafe[None, :])
        tl.store(d_ptr + (bh.to(tl.int64) * NT + n) * K + kk, tl.exp(b_last), mask=kmask)
        if KEYS:
            xd = x * tl.exp(tl.minimum(b_last[None, :] - b, 0))
        else:
            xd = x * tl.exp(b)
    else:
        g = tl.load(g_ptr + tok, mask=rmask, other=0).to(tl.float32)
        b = tl.cumsum(g, axis=0)
        b_last = tl.sum(tl.where(is_last, b, 0), axis=0)
        if STORE_B > 0:
            tl.store(b_ptr + _srow(bh, rows, T), b, mask=rmask)
        tl.store(d_ptr + bh.to(tl.int64) * NT + n, tl.exp(b_last))
        if KEYS:
            xd = x * tl.exp(tl.minimum(b_last - b, 0))[:, None]
        else:
            xd = x * tl.exp(b)[:, None]
    tl.store(xd_ptr + tok[:, None] * K + kk[None, :], xd.to(xd_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _chunk_and_head(HEADS_FIRST: tl.constexpr):
    """(chunk, batch * head) of a chunk-parallel program. The grid's first axis varies fastest in launch order:
    (NT, B * H) runs the chunks of one head together, whose rows lie H * K elements apart; HEADS_FIRST, the grid
    (B * H, NT), runs the heads of the same rows together, so that the programs in flight read one contiguous span
    of q, k, v and do."""
    if HEADS_FIRST:
        return tl.program_id(1), tl.program_id(0)
    else:
        return tl.program_id(0), tl.program_id(1)


@triton.jit
def _cumsum_rows(g, BT: tl.constexpr):
    """Cumulative sum over the rows of a gate tile g [BT, D] (rows past T zero), in fp32. 16-bit gates:
    one matmul with a lower-triangular 0/1 matrix, exact up to the fp32 accumulation (the products are the
    gate values themselves) and on tensor cores: tl.cumsum across the warps of a [64, 128] tile cost
    more than the memory traffic of the whole gate pass. Other gates (fp32, fp64) keep tl.cumsum in fp32 (a
    16-bit matmul would round them)."""
    # (plain dtype comparisons: the form of constexpr test known to compile on Triton 3.6)
    if g.dtype == tl.float32:
        return tl.cumsum(g, axis=0)
    else:
        if g.dtype == tl.float64:
            return tl.cumsum(g.to(tl.float32), axis=0)
        else:
            ii = tl.arange(0, BT)
            tri = (ii[:, None] >= ii[None, :]).to(g.dtype)
            return tl.dot(tri, g, out_dtype=tl.float32)


@triton.jit
def _safe_chunk(g, BT: tl.constexpr, SAFE: tl.constexpr):
    """1 (int32) when, in every channel of the gate tile g [BT, D] (rows past T zero), the steps after the
    first move b by at most SAFE in total: a = sum_{i>=1} |g_i| <= SAFE. Then every b_i lies within a/2 of
    the midpoint r = (b_0 + b_last) / 2 (`_midpoint`); for log-decays (g <= 0) a is the chunk's span
    b_0 - b_last, so the test is "span <= SAFE", from two sums instead of a cumulative sum and a max / min."""
    ii = tl.arange(0, BT)
    a = tl.sum(tl.where(ii[:, None] >= 1, tl.abs(g.to(tl.float32)), 0), axis=0)
    return (tl.max(a, axis=0) <= SAFE).to(tl.int32)


@triton.jit
def _midpoint(b_first, b_last):
    """r = (b_0 + b_last) / 2 per channel: within SAFE / 2 of every b_i of a chunk flagged safe."""
    return 0.5 * (b_first + b_last)


@triton.jit
def _split_decay(q, k, b, r):
    """q exp(b - r) and k exp(r - b), r from `_midpoint`, in the matmul dtype (fp32 for fp32 inputs, else
    bf16 for its range). Their product gives exp(b_i - b_j) exactly up to rounding; used only on chunks
    flagged safe (`_safe_chunk`: |b - r| <= SAFE / 2 there)."""
    # the clamp only matters on unsafe chunks, whose results are discarded (keeps them finite)
    qf = q.to(tl.float32) * tl.exp(tl.minimum(b - r[None, :], 40.0))
    kf = k.to(tl.float32) * tl.exp(tl.minimum(r[None, :] - b, 40.0))
    if q.dtype != tl.float32:
        qf = qf.to(tl.bfloat16)
        kf = kf.to(tl.bfloat16)
    return qf, kf


@triton.jit
def _chunk_decay(d_ptr, bh, n, NT, kk, kmask, K: tl.constexpr, GATE: tl.constexpr):
    """exp(b_last) of chunk n from `_gate_prep_kernel`: a scalar (GATE 1) or this K tile's vector (GATE 2)."""
    if GATE == 1:
        return tl.load(d_ptr + bh.to(tl.int64) * NT + n)
    else:
        return tl.load(d_ptr + (bh.to(tl.int64) * NT + n) * K + kk, mask=kmask, other=0)


@triton.jit
def _decay_state(state, d, GATE: tl.constexpr):
    if GATE == 1:
        return state * d
    else:
        return state * d[:, None]


@triton.jit
def _srow(bh, rows, T):
    """Offsets of rows of a scalar gate's cumulative sum b, stored [B*H, T]: a chunk's rows are contiguous
    (in the [B, T, H] layout of the gate they lie H apart, one 32-byte sector each)."""
    return bh.to(tl.int64) * T + rows


@triton.jit
def _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT: tl.constexpr, FIXED: tl.constexpr):
    """b (the within-chunk cumulative log-decay of each row, fp32) and b_last of chunk n, scalar gate:
    read from the cumulative gate, or (FIXED, RetNet) formed from the head's fixed log-decay g_h that
    b_ptr then holds ([H]): b_i = (i + 1) g_h, b_last = L g_h for the chunk's L valid rows. No pass over
    the sequence, no gate load in the scans' loops. Rows past T get b_last (their q and k are zero)."""
    if FIXED:
        lg = tl.load(b_ptr + hh).to(tl.float32)
        L = tl.minimum(T - n * BT, BT)
        ii = tl.arange(0, BT)
        b = (tl.minimum(ii, L - 1) + 1).to(tl.float32) * lg
        b_last = L.to(tl.float32) * lg
    else:
        b = tl.load(b_ptr + _srow(bh, n * BT + tl.arange(0, BT), T), mask=rmask, other=0)
        b_last = tl.load(b_ptr + _srow(bh, tl.minimum(n * BT + BT, T) - 1, T))
    return b, b_last


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _state_fwd_kernel(k_ptr, v_ptr, b_ptr, w_ptr, h0_ptr, h_ptr, ht_ptr, vnew_ptr,
                      T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr,
                      HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, PREC: tl.constexpr,
                      PRE: tl.constexpr = False, FIXED: tl.constexpr = False, SCALE16: tl.constexpr = False):
    """Sequential scan over chunks: stores h_n (state entering chunk n) and the final state.

    DELTA: v_ptr holds u and w_ptr holds w of the UT transform; the values written into the state
    are v_new = u - w h_n (stored to vnew_ptr for the output kernel). BK must then cover K.
    PRE (gated): k_ptr holds the decayed keys k exp(b_last - b) and b_ptr exp(b_last) per chunk
    (`_gate_prep_kernel` / `_wy_fwd_kernel`); the loop only rescales the state, by a factor loaded one
    chunk ahead so that no gate load waits inside the loop.
    """
    ik = tl.program_id(0)
    iv = tl.program_id(1)
    bh = tl.program_id(2)
    bb = bh // H
    hh = bh % H
    kk = ik * BK + tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    kmask = kk < K
    vmask = vv < V
    kvmask = kmask[:, None] & vmask[None, :]
    kv_offs = kk[:, None] * V + vv[None, :]
    state = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        state += tl.load(h0_ptr + bh.to(tl.int64) * K * V + kv_offs, mask=kvmask, other=0).to(tl.float32)
    if PRE:
        d_next = _chunk_decay(b_ptr, bh, 0, NT, kk, kmask, K, GATE)
    for n in range(NT):
        if PRE:
            d_cur = d_next
            d_next = _chunk_decay(b_ptr, bh, tl.minimum(n + 1, NT - 1), NT, kk, kmask, K, GATE)
        tl.store(h_ptr + (bh.to(tl.int64) * NT + n) * K * V + kv_offs,
                 state.to(h_ptr.dtype.element_ty), mask=kvmask)
        rows = n * BT + tl.arange(0, BT)
        rmask = rows < T
        tok = (bb * T + rows).to(tl.int64) * H + hh
        last = (bb * T + tl.minimum(n * BT + BT, T) - 1).to(tl.int64) * H + hh
        k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0)
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None] & vmask[None, :], other=0)
        if DELTA:
            w_t = tl.load(w_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0)
            v_new = v_t.to(tl.float32) - tl.dot(w_t, state.to(w_t.dtype), input_precision=PREC)
            v_t = v_new.to(v_t.dtype)
            tl.store(vnew_ptr + tok[:, None] * V + vv[None, :], v_t, mask=rmask[:, None] & vmask[None, :])
        if PRE:
            state = _decay_state(state, d_cur, GATE)
        elif GATE == 1:
            b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, FIXED)
            k_t = _scale_rows(k_t, tl.exp(tl.minimum(b_last - b, 0)), SCALE16)
            state = state * tl.exp(b_last)
        elif GATE == 2:
            b = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0)
            b_last = tl.load(b_ptr + last * K + kk, mask=kmask, other=0)
            k_t = (k_t * tl.exp(tl.minimum(b_last[None, :] - b, 0))).to(v_t.dtype)
            state = state * tl.exp(b_last)[:, None]
        state += tl.dot(tl.trans(k_t), v_t, input_precision=PREC)
    if STORE_HT:
        tl.store(ht_ptr + bh.to(tl.int64) * K * V + kv_offs, state, mask=kvmask)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _out_fwd_kernel(q_ptr, k_ptr, v_ptr, b_ptr, h_ptr, a_ptr, flag_ptr, o_ptr, scale,
                    T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                    BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                    FIXED: tl.constexpr = False):
    """o = scale * ((q * exp(b)) h_n + A v). Per-channel gates: A is one matmul of the split-decay
    factors on chunks flagged safe, else read from a_ptr (`_gla_intra_kernel`)."""
    iv = tl.program_id(0)
    n = tl.program_id(1)
    bh = tl.program_id(2)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    first = (bb * T + n * BT).to(tl.int64) * H + hh
    last = (bb * T + tl.minimum(n * BT + BT, T) - 1).to(tl.int64) * H + hh
    vv = iv * BV + tl.arange(0, BV)
    vmask = vv < V
    acc = tl.zeros([BT, BV], dtype=tl.float32)
    att = tl.zeros([BT, BT], dtype=tl.float32)
    h_base = h_ptr + (bh.to(tl.int64) * NT + n) * K * V
    for ik in range(tl.cdiv(K, BK)):
        kk = ik * BK + tl.arange(0, BK)
        kmask = kk < K
        m2 = rmask[:, None] & kmask[None, :]
        q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
        h_t = tl.load(h_base + kk[:, None] * V + vv[None, :], mask=kmask[:, None] & vmask[None, :], other=0)
        if GATE == 2:
            b = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
            acc += tl.dot((q_t * tl.exp(b)).to(h_t.dtype), h_t, input_precision=PREC)
            k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
            r = _midpoint(tl.load(b_ptr + first * K + kk, mask=kmask, other=0),
                          tl.load(b_ptr + last * K + kk, mask=kmask, other=0))
            qf, kf = _split_decay(q_t, k_t, b, r)
            att += tl.dot(qf, tl.trans(kf), input_precision=PREC)
        else:
            k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
            acc += tl.dot(q_t.to(h_t.dtype), h_t, input_precision=PREC)
            att += tl.dot(q_t, tl.trans(k_t), input_precision=PREC)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    if GATE == 1:
        b, _b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, FIXED)
        acc = acc * tl.exp(b)[:, None]
        att = att * tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
    elif GATE == 2:
        fast = (ii * 0 + tl.load(flag_ptr + bh.to(tl.int64) * NT + n)) != 0  # broadcast: masks take no scalars
        att_slow = tl.load(a_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :],
                           mask=rmask[:, None] & ~fast[None, :], other=0)
        att = tl.where(fast[None, :] & causal, att, att_slow)
    else:
        att = tl.where(causal, att, 0)
    v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None] & vmask[None, :], other=0)
    acc += tl.dot(att.to(v_t.dtype), v_t, input_precision=PREC)
    tl.store(o_ptr + tok[:, None] * V + vv[None, :], (acc * scale).to(o_ptr.dtype.element_ty),
             mask=rmask[:, None] & vmask[None, :])


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _out_chunk_kernel(q_ptr, k_ptr, v_ptr, g_ptr, h_ptr, a_ptr, flag_ptr, o_ptr, scale,
                      T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                      FIXED: tl.constexpr = False):
    """One program per chunk: o = scale * ((q exp(b)) h_n + A v) with q (all of K) and A formed once,
    then one pass per V tile (`_out_fwd_kernel` forms A again for every V tile).
    GATE 2 (GLA_OUT_FUSED): g_ptr holds the raw per-channel gate; b is formed in registers (no fp32 b read
    back) and A is one matmul of the split-decay factors on chunks flagged safe, else read from a_ptr
    (`_gla_intra_kernel`). GATE 0 / 1 (OUT_V_LOOP): g_ptr holds b for a scalar gate, as in `_out_fwd_kernel`."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    m2 = rmask[:, None] & (kk < K)[None, :]
    q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    if GATE == 2:
        g_t = tl.load(g_ptr + tok[:, None] * K + kk[None, :], mask=m2, other=0)
        b = _cumsum_rows(g_t, BT)
        first = (bb * T + n * BT).to(tl.int64) * H + hh
        r = _midpoint(tl.load(g_ptr + first * K + kk, mask=kk < K, other=0).to(tl.float32),
                      tl.sum(g_t.to(tl.float32), axis=0))
        qg = (q_t * tl.exp(b)).to(h_ptr.dtype.element_ty)
        qf, kf = _split_decay(q_t, k_t, b, r)
        att = tl.dot(qf, tl.trans(kf), input_precision=PREC)
        fast = (ii * 0 + tl.load(flag_ptr + bh.to(tl.int64) * NT + n)) != 0  # broadcast: masks take no scalars
        att_slow = tl.load(a_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :],
                           mask=rmask[:, None] & ~fast[None, :], other=0)
        att = tl.where(fast[None, :] & causal, att, att_slow)
    else:
        qg = q_t.to(h_ptr.dtype.element_ty)
        att = tl.dot(q_t, tl.trans(k_t), input_precision=PREC)
        if GATE == 1:
            b, _b_last = _scalar_decay(g_ptr, bh, rmask, hh, n, T, BT, FIXED)
            att = att * tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
            row_decay = tl.exp(b)
        else:
            att = tl.where(causal, att, 0)
    att = att.to(v_ptr.dtype.element_ty)
    h_base = h_ptr + (bh.to(tl.int64) * NT + n) * K * V
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        vmask = vv < V
        h_t = tl.load(h_base + kk[:, None] * V + vv[None, :], mask=(kk < K)[:, None] & vmask[None, :], other=0)
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None] & vmask[None, :], other=0)
        acc = tl.dot(qg, h_t, input_precision=PREC)
        if GATE == 1:
            acc = acc * row_decay[:, None]
        acc += tl.dot(att, v_t, input_precision=PREC)
        tl.store(o_ptr + tok[:, None] * V + vv[None, :], (acc * scale).to(o_ptr.dtype.element_ty),
                 mask=rmask[:, None] & vmask[None, :])


@triton.jit
def _scale_rows(x, f, SCALE16: tl.constexpr):
    """x [R, C] times the row factors f [R] (fp32), in x's dtype. SCALE16, bf16 x: f rounded to bf16 first, so
    that one packed bf16 multiply serves two elements (sm_90 HMUL2) instead of unpacking, fp32 multiplies and
    packing again (f's rounding adds at most 2^-9 relative error, below x's own rounding). fp16 x keeps the fp32
    product: a factor below fp16's normal range (6e-5) would lose its precision before the multiply."""
    # (plain dtype comparisons: the form of constexpr test known to compile on Triton 3.6)
    if SCALE16 and x.dtype == tl.bfloat16:
        return x * f.to(x.dtype)[:, None]
    else:
        return (x * f[:, None]).to(x.dtype)


@triton.jit
def _rows_dot(x1, x2, s1, s2, PREC: tl.constexpr, SPLIT: tl.constexpr):
    """x h for a state held whole (s1) or as two halves of K (SPLIT: x1, x2 the matching column halves of x)."""
    acc = tl.dot(x1, s1.to(x1.dtype), input_precision=PREC)
    if SPLIT:
        acc = tl.dot(x2, s2.to(x2.dtype), acc, input_precision=PREC)
    return acc


@triton.jit
def _state_step(s, k, v, d, c, PREC: tl.constexpr, FORM: tl.constexpr):
    """The state (or one half of it) after a chunk: FORM 0, s + k^T v; 1, d s + k^T v; 2, d s + c k^T v."""
    if FORM == 0:
        return tl.dot(tl.trans(k), v, s, input_precision=PREC)
    elif FORM == 1:
        return tl.dot(tl.trans(k), v, s * d, input_precision=PREC)
    else:
        return s * d + c * tl.dot(tl.trans(k), v, input_precision=PREC)


@triton.jit
def _gate_rows(b_ptr, bh, hh, n, NT, T, ii, b_nx, bl_nx, b0_nx, BT: tl.constexpr, PRE_LOAD: tl.constexpr,
               NEED_B0: tl.constexpr):
    """b, b_last and (NEED_B0, else b_last again) b_0 of chunk n of a data-dependent scalar gate, and what
    PRE_LOAD carries to the next iteration: chunk n + 1's, loaded now (else b_nx, bl_nx, b0_nx come back as
    they were)."""
    if PRE_LOAD:
        b, b_last, b_0 = b_nx, bl_nx, b0_nx
        n1 = tl.minimum(n + 1, NT - 1)
        b_nx, bl_nx = _scalar_decay(b_ptr, bh, n1 * BT + ii < T, hh, n1, T, BT, False)
        b0_nx = tl.load(b_ptr + _srow(bh, n1 * BT, T))
    else:
        b, b_last = _scalar_decay(b_ptr, bh, n * BT + ii < T, hh, n, T, BT, False)
        b_0 = b_last
        if NEED_B0:
            b_0 = tl.load(b_ptr + _srow(bh, n * BT, T))
    return b, b_last, b_0, b_nx, bl_nx, b0_nx


@triton.jit
def _fused_chunks(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, h_ptr, o_ptr, s1, s2, n_start, n_end, scale, bh, bb, hh, vv,
                  T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                  GATE: tl.constexpr, STORE_H: tl.constexpr, PREC: tl.constexpr, FIXED: tl.constexpr,
                  FOLD: tl.constexpr, SAFE: tl.constexpr, DELTA: tl.constexpr, PREFETCH: tl.constexpr,
                  SPLIT: tl.constexpr, SCALE16: tl.constexpr):
    """Chunks n_start .. n_end - 1 of `_fused_fwd_kernel`; returns the state after them, whole
    in s1 ([BK, BV]; s2 unused) or (SPLIT) as its two halves of K, s1 and s2 ([BK / 2, BV] each, q, k and w
    loaded as two column halves): every matmul then has BK / 2 rows or a BK / 2 reduction.
    DELTA: v_ptr holds u and w_ptr w of the UT transform, and the values are v_new = u - w h_n.

    FOLD (scalar gate, every chunk's gate moving b by at most SAFE after its first step): the decay
    exp(b_i - b_j) = exp(b_i - r) exp(r - b_j) about r = (b_0 + b_last) / 2, both factors within exp(+-SAFE/2),
    goes on the rows of v and of o, so that no [BT, BT] score takes an exponential or a product; and
    v exp(b_last - b) = exp(b_last - r) v exp(r - b) feeds the state from the same tile. Else one
    exponential per score, and the decay into the next state on v's rows (a [BT, BV] tile, not the keys).
    PREFETCH (data-dependent scalar gate): chunk n + 1's b, b_0 and b_last are loaded in iteration n, so their
    latency hides behind a whole chunk's work (Triton pipelines the loads that feed matmuls, not these).
    FOLD 3: the pivot is the chunk's end and the chunk's decay d = exp(b_last) is applied to the state first,
    so that q (d h_n) needs no product of its own and the state's update no factor. A fixed decay folds full
    chunks only (the caller leaves a shorter last chunk to the exact loop), so that no factor depends on the
    chunk's length; a data-dependent gate folds sequences whose chunks span at most SAFE / 2 (the caller's flag)."""
    HK: tl.constexpr = BK // 2 if SPLIT else BK
    k1 = tl.arange(0, HK)
    k2 = HK + k1
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    vmask = vv < V
    if GATE == 1 and FIXED and FOLD == 1:
        # a fixed decay folds about the same r in every chunk: b_i = (i + 1) g_h (rows past T in the last chunk
        # have q = k = v = 0), so the row factors are computed once; only b_last changes, in the last chunk
        lg = tl.load(b_ptr + hh).to(tl.float32)
        b_f = (ii + 1).to(tl.float32) * lg
        r_f = lg * ((BT + 1) * 0.5)
        v_fac = tl.exp(tl.minimum(r_f - b_f, SAFE))  # (clamped: unused, and past exp's range, on unsafe heads)
        o_fac = tl.exp(tl.minimum(b_f - r_f, SAFE))
        e_r = tl.exp(r_f)
    if GATE == 1 and FIXED and FOLD >= 2:
        # FOLD 2 / 3, fixed decay with (BT - 1) |g_h| <= SAFE / 2: the pivot is the chunk's end p = BT g_h, so that
        # v exp(b_last - b_j) serves both the scores and the state (no separate factor on the state's update):
        # o_i = exp(b_i - b_last) (exp(b_last) q_i h_n + sum_j A_ij v_j exp(b_last - b_j)), every factor within
        # exp(+-SAFE / 2), the row factors computed once (FOLD 2: only the last chunk's b_last differs, s below;
        # FOLD 3 folds full chunks only)
        lg = tl.load(b_ptr + hh).to(tl.float32)
        b_f = (ii + 1).to(tl.float32) * lg
        p_f = lg * BT
        v_fac = tl.exp(tl.minimum(p_f - b_f, SAFE))
        o_fac = tl.exp(tl.minimum(b_f - p_f, SAFE))
        d_f = tl.exp(p_f)
    PRE_LOAD: tl.constexpr = GATE == 1 and not FIXED and PREFETCH
    # FOLD 3, data-dependent gate: the gate's rows are needed before q h_n (the state is decayed first)
    EARLY_GATE: tl.constexpr = GATE == 1 and not FIXED and FOLD >= 3
    # FOLD 4: the state is held as cs * s, the chunks' decays multiplied into the scalar cs instead of into every
    # element of s; s takes cs back (and cs is reset) once cs falls below LAZY_MIN, and on the way out
    LAZY: tl.constexpr = GATE == 1 and FOLD >= 4
    # data-dependent gate: c goes back into s before a chunk that would take c exp(b_last) below 1 / F, the bound
    # on every row factor (FOLD 4: F = exp(SAFE / 2) / LAZY_MIN; FOLD 5: exp(LAZY_SPAN)), the chunk's first step
    # with it (a fixed decay: after a chunk that took c below LAZY_MIN; its steps are small)
    SPAN_LAZY: tl.constexpr = LAZY and not FIXED
    F_MAX: tl.constexpr = LAZY_FACTOR_MAX if FOLD == 5 else LAZY_FACTOR_4
    cs = 1.0
    b_nx = 0.0  # (placeholders the loop carries unchanged without PRE_LOAD)
    bl_nx = 0.0
    b0_nx = 0.0
    if PRE_LOAD:
        n0 = tl.minimum(n_start, NT - 1)
        b_nx, bl_nx = _scalar_decay(b_ptr, bh, n0 * BT + ii < T, hh, n0, T, BT, FIXED)
        b0_nx = tl.load(b_ptr + _srow(bh, n0 * BT, T))
    for n in range(n_start, n_end):
        if STORE_H:
            h_at = h_ptr + (bh.to(tl.int64) * NT + n) * K * V
            tl.store(h_at + k1[:, None] * V + vv[None, :], (s1 * cs).to(h_ptr.dtype.element_ty),
                     mask=(k1 < K)[:, None] & vmask[None, :])
            if SPLIT:
                tl.store(h_at + k2[:, None] * V + vv[None, :], (s2 * cs).to(h_ptr.dtype.element_ty),
                         mask=(k2 < K)[:, None] & vmask[None, :])
        rows = n * BT + ii
        rmask = rows < T
        tok = (bb * T + rows).to(tl.int64) * H + hh
        m_1 = rmask[:, None] & (k1 < K)[None, :]
        m_2 = rmask[:, None] & (k2 < K)[None, :]
        m_v = rmask[:, None] & vmask[None, :]
        q1 = tl.load(q_ptr + tok[:, None] * K + k1[None, :], mask=m_1, other=0)
        ka = tl.load(k_ptr + tok[:, None] * K + k1[None, :], mask=m_1, other=0)
        q2 = q1
        kb = ka
        if SPLIT:
            q2 = tl.load(q_ptr + tok[:, None] * K + k2[None, :], mask=m_2, other=0)
            kb = tl.load(k_ptr + tok[:, None] * K + k2[None, :], mask=m_2, other=0)
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        if DELTA:
            w1 = tl.load(w_ptr + tok[:, None] * K + k1[None, :], mask=m_1, other=0)
            w2 = w1
            if SPLIT:
                w2 = tl.load(w_ptr + tok[:, None] * K + k2[None, :], mask=m_2, other=0)
            v_t = (v_t.to(tl.float32) - _rows_dot(w1, w2, s1, s2, PREC, SPLIT) * cs).to(v_t.dtype)
        att = tl.dot(q1, tl.trans(ka), input_precision=PREC)
        if SPLIT:
            att = tl.dot(q2, tl.trans(kb), att, input_precision=PREC)
        att = tl.where(causal, att, 0)
        if GATE == 1 and FOLD >= 3:  # the chunk's decay goes on the state (or, LAZY, on cs) before q h_n
            if FIXED:
                d_n = d_f
            else:
                b, b_last, b_0, b_nx, bl_nx, b0_nx = _gate_rows(b_ptr, bh, hh, n, NT, T, ii, b_nx, bl_nx, b0_nx,
                                                                BT, PRE_LOAD, SPAN_LAZY)
                d_n = tl.exp(b_last)
            if SPAN_LAZY:
                if cs * d_n < 1.0 / F_MAX:
                    # s takes c and the chunk's first step (whatever its size: it may underflow s to 0, as the
                    # true state does); c keeps the rest, exp(b_last - b_0) >= exp(-LAZY_SPAN)
                    back = cs * tl.exp(b_0)
                    s1 = s1 * back
                    if SPLIT:
                        s2 = s2 * back
                    cs = tl.exp(b_last - b_0)
                else:
                    cs = cs * d_n
            elif LAZY:
                cs = cs * d_n
            else:
                s1 = s1 * d_n
                if SPLIT:
                    s2 = s2 * d_n
        acc = _rows_dot(q1, q2, s1, s2, PREC, SPLIT)
        if GATE == 1 and FIXED and FOLD >= 3:
            # (LAZY: o = cs (q s + att v_x / cs), the state's update takes v_x / cs)
            v_x = _scale_rows(v_t, v_fac / cs, SCALE16)
            acc = tl.dot(att.to(v_t.dtype), v_x, acc, input_precision=PREC) * (o_fac * cs)[:, None]
            d = 1.0
            c = 1.0
            FORM: tl.constexpr = 0
        elif GATE == 1 and FIXED and FOLD == 2:
            b_last = tl.minimum(T - n * BT, BT).to(tl.float32) * lg
            d = tl.exp(b_last)
            s_last = tl.exp(b_last - p_f)  # 1 but in a last chunk shorter than BT
            v_x = _scale_rows(v_t, v_fac * s_last, SCALE16)
            acc = tl.dot(att.to(v_t.dtype), v_x, acc * d, input_precision=PREC)
            acc = acc * (o_fac / s_last)[:, None]
            c = 1.0
            FORM: tl.constexpr = 1
        elif GATE == 1 and FIXED and FOLD == 1:
            b_last = tl.minimum(T - n * BT, BT).to(tl.float32) * lg
            v_x = _scale_rows(v_t, v_fac, SCALE16)
            acc = acc * e_r + tl.dot(att.to(v_t.dtype), v_x, input_precision=PREC)
            acc = acc * o_fac[:, None]
            d = tl.exp(b_last)
            c = tl.exp(b_last - r_f)
            FORM: tl.constexpr = 2
        elif GATE == 1:
            # (b_0 and b_last by scalar loads: taking them out of the b tile by two reductions measured 1.14x
            # slower for Mamba-2 on the H200, results/h200_session7/fold2)
            if EARLY_GATE:
                # FOLD 3: pivot at the chunk's end (every chunk spans at most SAFE / 2 after its first step): v's
                # factors exp(b_last - b_j) lie in [exp(-SAFE / 2), 1], o's in [1, exp(SAFE / 2)], and the
                # state, decayed above, takes k^T v_x with no factor of its own
                v_x = _scale_rows(v_t, tl.exp(b_last - b) / cs, SCALE16)
                acc = tl.dot(att.to(v_t.dtype), v_x, acc, input_precision=PREC)
                acc = acc * (tl.exp(b - b_last) * cs)[:, None]
                d = 1.0
                c = 1.0
                FORM: tl.constexpr = 0
            elif FOLD:
                b, b_last, b_0, b_nx, bl_nx, b0_nx = _gate_rows(b_ptr, bh, hh, n, NT, T, ii, b_nx, bl_nx, b0_nx,
                                                                BT, PRE_LOAD, True)
                d = tl.exp(b_last)
                r = (b_0 + b_last) * 0.5
                v_x = _scale_rows(v_t, tl.exp(r - b), SCALE16)
                acc = acc * tl.exp(r) + tl.dot(att.to(v_t.dtype), v_x, input_precision=PREC)
                acc = acc * tl.exp(b - r)[:, None]
                c = tl.exp(b_last - r)
                FORM: tl.constexpr = 2
            else:
                if FIXED:
                    b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, FIXED)
                else:
                    b, b_last, b_0, b_nx, bl_nx, b0_nx = _gate_rows(b_ptr, bh, hh, n, NT, T, ii, b_nx, bl_nx,
                                                                    b0_nx, BT, PRE_LOAD, False)
                d = tl.exp(b_last)
                att = att * tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
                acc = acc * tl.exp(b)[:, None] + tl.dot(att.to(v_t.dtype), v_t, input_precision=PREC)
                v_x = _scale_rows(v_t, tl.exp(tl.minimum(b_last - b, 0)), SCALE16)
                c = 1.0
                FORM: tl.constexpr = 1
        else:
            acc += tl.dot(att.to(v_t.dtype), v_t, input_precision=PREC)
            v_x = v_t
            d = 1.0
            c = 1.0
            FORM: tl.constexpr = 0
        s1 = _state_step(s1, ka, v_x, d, c, PREC, FORM)
        if SPLIT:
            s2 = _state_step(s2, kb, v_x, d, c, PREC, FORM)
        tl.store(o_ptr + tok[:, None] * V + vv[None, :], (acc * scale).to(o_ptr.dtype.element_ty), mask=m_v)
        if LAZY and not SPAN_LAZY:
            if cs < LAZY_MIN:
                s1 = s1 * cs
                if SPLIT:
                    s2 = s2 * cs
                cs = 1.0
    if LAZY:
        s1 = s1 * cs
        if SPLIT:
            s2 = s2 * cs
    return s1, s2


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _fused_fwd_kernel(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, flag_ptr, h0_ptr, h_ptr, ht_ptr, o_ptr, scale,
                      T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
                      BV: tl.constexpr, GATE: tl.constexpr, HAS_H0: tl.constexpr, STORE_H: tl.constexpr,
                      STORE_HT: tl.constexpr, PREC: tl.constexpr, FIXED: tl.constexpr = False,
                      SAFE: tl.constexpr = 80.0, FOLD: tl.constexpr = 1, DELTA: tl.constexpr = False,
                      PREFETCH: tl.constexpr = 0, SPLIT: tl.constexpr = False, SCALE16: tl.constexpr = False):
    """The state scan and the output in one sequential pass over chunks (no gate or a scalar gate):
    o = scale * ((q exp(b)) h_n + A v) and h_{n+1} = exp(b_last) h_n + (k exp(b_last - b))^T v; for the delta
    rule (DELTA) v is v_new = u - w h_n, from the UT transform's w and u.

    The state never leaves registers unless STORE_H (a forward that a backward follows stores h_n, as
    `_state_fwd_kernel` does); without it the forward writes only o. One program holds all of K (SPLIT: as two
    halves) and a V tile, so q k^T is formed once per V tile: the chunk-parallel output kernel forms it once
    per chunk, but reads h_n back, which at K = V = 128 and chunk 64 is as many bytes as q and k together.

    Scalar gates with FOLD: a sequence whose chunks are all safe (flag_ptr[bh] from `_chunk_cumsum_kernel`;
    for a fixed decay, (BT - 1) |g_h| <= SAFE) runs the folded loop, any other the exact one. Both loops are
    compiled and one runs for zero chunks: a branch around them, or inside one loop, is what Triton 3.6's
    software pipeliner failed to compile."""
    iv = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    HK: tl.constexpr = BK // 2 if SPLIT else BK
    k1 = tl.arange(0, HK)
    k2 = HK + k1
    vv = iv * BV + tl.arange(0, BV)
    vmask = vv < V
    m1 = (k1 < K)[:, None] & vmask[None, :]
    m2 = (k2 < K)[:, None] & vmask[None, :]
    o1 = bh.to(tl.int64) * K * V + k1[:, None] * V + vv[None, :]
    o2 = bh.to(tl.int64) * K * V + k2[:, None] * V + vv[None, :]
    s1 = tl.zeros([HK, BV], dtype=tl.float32)
    s2 = tl.zeros([HK, BV], dtype=tl.float32)
    if HAS_H0:
        s1 += tl.load(h0_ptr + o1, mask=m1, other=0).to(tl.float32)
        if SPLIT:
            s2 += tl.load(h0_ptr + o2, mask=m2, other=0).to(tl.float32)
    if GATE == 1 and FOLD > 0:
        # chunks [0, n_top) take the FOLD loop, [n_top, n_mid) FOLD 1's (FOLD >= 3, data-dependent gate: a
        # sequence within SAFE but beyond the end pivot's span, level 1), [n_mid, NT) the exact loop
        if FIXED:
            lim = SAFE * 0.5 if FOLD >= 2 else SAFE
            fold = (tl.load(b_ptr + hh).to(tl.float32) * (BT - 1) >= -lim).to(tl.int32)
            # FOLD 3 folds full chunks only; a shorter last chunk takes the exact loop
            n_top = (T // BT if FOLD >= 3 else NT) * fold
            n_mid = n_top
        elif FOLD >= 3:
            level = tl.load(flag_ptr + bh)
            n_top = NT * (level == 2).to(tl.int32)
            n_mid = n_top + NT * (level == 1).to(tl.int32)
        else:
            n_top = NT * tl.load(flag_ptr + bh)
            n_mid = n_top
        s1, s2 = _fused_chunks(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, h_ptr, o_ptr, s1, s2, 0, n_top, scale, bh, bb,
                               hh, vv, T, NT, H, K, V, BT, BK, GATE, STORE_H, PREC, FIXED, FOLD, SAFE, DELTA,
                               PREFETCH, SPLIT, SCALE16)
        if FOLD >= 3 and not FIXED:
            s1, s2 = _fused_chunks(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, h_ptr, o_ptr, s1, s2, n_top, n_mid, scale,
                                   bh, bb, hh, vv, T, NT, H, K, V, BT, BK, GATE, STORE_H, PREC, FIXED, 1, SAFE,
                                   DELTA, PREFETCH, SPLIT, SCALE16)
        s1, s2 = _fused_chunks(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, h_ptr, o_ptr, s1, s2, n_mid, NT, scale, bh,
                               bb, hh, vv, T, NT, H, K, V, BT, BK, GATE, STORE_H, PREC, FIXED, 0, SAFE, DELTA,
                               PREFETCH, SPLIT, SCALE16)
    else:
        s1, s2 = _fused_chunks(q_ptr, k_ptr, v_ptr, w_ptr, b_ptr, h_ptr, o_ptr, s1, s2, 0, NT, scale, bh, bb, hh, vv,
                               T, NT, H, K, V, BT, BK, GATE, STORE_H, PREC, FIXED, 0, SAFE, DELTA, PREFETCH, SPLIT,
                               SCALE16)
    if STORE_HT:
        tl.store(ht_ptr + o1, s1, mask=m1)
        if SPLIT:
            tl.store(ht_ptr + o2, s2, mask=m2)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _gla_intra_kernel(q_ptr, k_ptr, b_ptr, flag_ptr, a_ptr, T, NT, H, K: tl.constexpr,
                      BT: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr):
    """Per-channel gate: A[i, j] = sum_c q_ic k_jc exp(b_ic - b_jc) for j <= i, by sub-blocks of
    BC rows; stored as rows of [B*H, T, BT] (fp32). Only for chunks not flagged safe (strong decay):
    the others form A by one matmul where it is used."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    NC: tl.constexpr = BT // BC
    bb = bh // H
    hh = bh % H
    # one program per chunk (a program per sub-block cost 0.12 ms at T=32768 when every chunk is safe
    # and the programs only read their flag); the sub-blocks of an unsafe chunk are taken in turn
    if tl.load(flag_ptr + bh.to(tl.int64) * NT + n) == 0:
        for ic in range(NC):
            r0 = n * BT + ic * BC
            if r0 < T:
                rows = r0 + tl.arange(0, BC)
                rmask = rows < T
                allrows = n * BT + tl.arange(0, BT)
                amask = allrows < T
                tok = (bb * T + rows).to(tl.int64) * H + hh
                atok = (bb * T + allrows).to(tl.int64) * H + hh
                kk = tl.arange(0, BK)
                kmask = kk < K
                q_i = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0).to(tl.float32)
                b_i = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & kmask[None, :], other=0)
                b_r = tl.load(b_ptr + ((bb * T + r0).to(tl.int64) * H + hh) * K + kk, mask=kmask, other=0)
                k_a = tl.load(k_ptr + atok[:, None] * K + kk[None, :], mask=amask[:, None] & kmask[None, :], other=0)
                b_a = tl.load(b_ptr + atok[:, None] * K + kk[None, :], mask=amask[:, None] & kmask[None, :], other=0)
                # earlier sub-blocks (j < r0): split exp(b_i - b_j) at r0, both factors <= 1
                before = (allrows < r0)[:, None]
                k_s = tl.where(before, k_a.to(tl.float32) * tl.exp(tl.minimum(b_r[None, :] - b_a, 0)), 0)
                q_s = q_i * tl.exp(tl.minimum(b_i - b_r[None, :], 0))
                att = tl.dot(q_s.to(k_a.dtype), tl.trans(k_s.to(k_a.dtype)), input_precision=PREC)
                # diagonal block, elementwise
                li = tl.arange(0, BC)
                lcol = tl.arange(0, BT)
                for j in range(BC):
                    jt = (bb * T + r0 + j).to(tl.int64) * H + hh
                    jmask = kmask & (kk * 0 + r0 + j < T)
                    k_j = tl.load(k_ptr + jt * K + kk, mask=jmask, other=0).to(tl.float32)
                    b_j = tl.load(b_ptr + jt * K + kk, mask=jmask, other=0)
                    col = tl.sum(q_i * k_j[None, :] * tl.exp(tl.minimum(b_i - b_j[None, :], 0)), axis=1)
                    col = tl.where(li >= j, col, 0)
                    att = tl.where(lcol[None, :] == ic * BC + j, col[:, None], att)
                tl.store(a_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + lcol[None, :], att, mask=rmask[:, None])


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _state_bwd_kernel(q_ptr, k_ptr, w_ptr, b_ptr, do_ptr, dvl_ptr, dht_ptr, dh0_ptr, gs_ptr, dvn_ptr,
                      scale, T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, DELTA: tl.constexpr,
                      HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, PREC: tl.constexpr,
                      PRE: tl.constexpr = False, FIXED: tl.constexpr = False, SCALE16: tl.constexpr = False):
    """Backward scan over chunks: stores G_n (gradient of the state leaving chunk n) and dh0.

    dh_n = exp(b_last) G_n + scale (q exp(b))^T do  [- w^T dv_new for the delta rule, where
    dv_new = dv_local + (k exp(b_last - b)) G_n is stored to dvn_ptr].
    PRE (gated): q_ptr holds q exp(b), k_ptr (delta) k exp(b_last - b), b_ptr exp(b_last) per chunk.
    """
    ik = tl.program_id(0)
    iv = tl.program_id(1)
    bh = tl.program_id(2)
    bb = bh // H
    hh = bh % H
    kk = ik * BK + tl.arange(0, BK)
    vv = iv * BV + tl.arange(0, BV)
    kmask = kk < K
    vmask = vv < V
    kvmask = kmask[:, None] & vmask[None, :]
    kv_offs = kk[:, None] * V + vv[None, :]
    dstate = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        dstate += tl.load(dht_ptr + bh.to(tl.int64) * K * V + kv_offs, mask=kvmask, other=0).to(tl.float32)
    if PRE:
        d_next = _chunk_decay(b_ptr, bh, NT - 1, NT, kk, kmask, K, GATE)
    for i in range(NT):
        n = NT - 1 - i
        if PRE:
            d_cur = d_next
            d_next = _chunk_decay(b_ptr, bh, tl.maximum(n - 1, 0), NT, kk, kmask, K, GATE)
        tl.store(gs_ptr + (bh.to(tl.int64) * NT + n) * K * V + kv_offs,
                 dstate.to(gs_ptr.dtype.element_ty), mask=kvmask)
        rows = n * BT + tl.arange(0, BT)
        rmask = rows < T
        tok = (bb * T + rows).to(tl.int64) * H + hh
        last = (bb * T + tl.minimum(n * BT + BT, T) - 1).to(tl.int64) * H + hh
        m_k = rmask[:, None] & kmask[None, :]
        m_v = rmask[:, None] & vmask[None, :]
        q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        if DELTA:
            k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            w_t = tl.load(w_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            dv = tl.load(dvl_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0).to(tl.float32)
        if PRE:
            dnext = _decay_state(dstate, d_cur, GATE)
        elif GATE == 1:
            b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, FIXED)
            q_t = _scale_rows(q_t, tl.exp(b), SCALE16)
            if DELTA:
                k_t = _scale_rows(k_t, tl.exp(tl.minimum(b_last - b, 0)), SCALE16)
            decay = tl.exp(b_last)
            dnext = dstate * decay
        elif GATE == 2:
            b = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            b_last = tl.load(b_ptr + last * K + kk, mask=kmask, other=0)
            q_t = (q_t * tl.exp(b)).to(do_t.dtype)
            dnext = dstate * tl.exp(b_last)[:, None]
        else:
            dnext = dstate
        if DELTA:
            dv += tl.dot(k_t, dstate.to(k_t.dtype), input_precision=PREC)
            tl.store(dvn_ptr + tok[:, None] * V + vv[None, :], dv.to(dvn_ptr.dtype.element_ty), mask=m_v)
            dnext -= tl.dot(tl.trans(w_t), dv.to(w_t.dtype), input_precision=PREC)
        dstate = dnext + scale * tl.dot(tl.trans(q_t), do_t, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0_ptr + bh.to(tl.int64) * K * V + kv_offs, dstate, mask=kvmask)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _delta_state_bwd_kernel(q_ptr, k_ptr, w_ptr, b_ptr, do_ptr, dvl_ptr, dht_ptr, dh0_ptr, gs_ptr, dvn_ptr,
                            scale, T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                            BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, HAS_DHT: tl.constexpr,
                            STORE_DH0: tl.constexpr, PREC: tl.constexpr, PRE: tl.constexpr = False):
    """The delta rule's backward scan (`_state_bwd_kernel` with DELTA) holding the state gradient as two
    [BK / 2, BV] halves of K, with q and w loaded as [BK / 2, BT] tiles (their transposes): every matmul has
    BK / 2 rows or a BK / 2 reduction. H200, K = 128, bf16: 0.60x the time of the [BK, BV] form
    (benchmarks/delta_scan_probe.py, results/h200_session8). Same stores: G_n, dv_new, dh0; same gates as there
    (PRE: q_ptr holds q exp(b), k_ptr k exp(b_last - b), b_ptr exp(b_last) per chunk)."""
    iv = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    HK: tl.constexpr = BK // 2
    k1 = tl.arange(0, HK)
    k2 = HK + k1
    vv = iv * BV + tl.arange(0, BV)
    ii = tl.arange(0, BT)
    vmask = vv < V
    m1 = (k1 < K)[:, None] & vmask[None, :]
    m2 = (k2 < K)[:, None] & vmask[None, :]
    o1 = k1[:, None] * V + vv[None, :]
    o2 = k2[:, None] * V + vv[None, :]
    d1 = tl.zeros([HK, BV], dtype=tl.float32)
    d2 = tl.zeros([HK, BV], dtype=tl.float32)
    if HAS_DHT:
        d1 += tl.load(dht_ptr + bh.to(tl.int64) * K * V + o1, mask=m1, other=0).to(tl.float32)
        d2 += tl.load(dht_ptr + bh.to(tl.int64) * K * V + o2, mask=m2, other=0).to(tl.float32)
    if PRE:
        d_next = tl.load(b_ptr + bh.to(tl.int64) * NT + NT - 1)
    # token offsets stepped from one base (no int64 product of the chunk index per row: 0.97x in the probe)
    base = (bb * T).to(tl.int64) * H + hh
    for i in range(NT):
        n = NT - 1 - i
        if PRE:
            decay = d_next
            d_next = tl.load(b_ptr + bh.to(tl.int64) * NT + tl.maximum(n - 1, 0))
        g_at = gs_ptr + (bh.to(tl.int64) * NT + n) * K * V
        tl.store(g_at + o1, d1.to(gs_ptr.dtype.element_ty), mask=m1)
        tl.store(g_at + o2, d2.to(gs_ptr.dtype.element_ty), mask=m2)
        rows = n * BT + ii
        rmask = rows < T
        tok = base + n.to(tl.int64) * (BT * H) + ii * H
        m_v = rmask[:, None] & vmask[None, :]
        ka = tl.load(k_ptr + tok[:, None] * K + k1[None, :], mask=rmask[:, None] & (k1 < K)[None, :], other=0)
        kb = tl.load(k_ptr + tok[:, None] * K + k2[None, :], mask=rmask[:, None] & (k2 < K)[None, :], other=0)
        if GATE == 1 and not PRE:
            b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, False)
            k_fac = tl.exp(tl.minimum(b_last - b, 0))[:, None]
            ka = (ka * k_fac).to(k_ptr.dtype.element_ty)
            kb = (kb * k_fac).to(k_ptr.dtype.element_ty)
            decay = tl.exp(b_last)
        dv = tl.dot(ka, d1.to(ka.dtype), input_precision=PREC)
        dv = tl.dot(kb, d2.to(kb.dtype), dv, input_precision=PREC)
        dv += tl.load(dvl_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0).to(tl.float32)
        tl.store(dvn_ptr + tok[:, None] * V + vv[None, :], dv.to(dvn_ptr.dtype.element_ty), mask=m_v)
        dvb = dv.to(ka.dtype)
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        q1 = tl.load(q_ptr + tok[None, :] * K + k1[:, None], mask=(k1 < K)[:, None] & rmask[None, :], other=0)
        w1 = tl.load(w_ptr + tok[None, :] * K + k1[:, None], mask=(k1 < K)[:, None] & rmask[None, :], other=0)
        q2 = tl.load(q_ptr + tok[None, :] * K + k2[:, None], mask=(k2 < K)[:, None] & rmask[None, :], other=0)
        w2 = tl.load(w_ptr + tok[None, :] * K + k2[:, None], mask=(k2 < K)[:, None] & rmask[None, :], other=0)
        if GATE == 1 and not PRE:
            q_fac = tl.exp(b)[None, :]
            q1 = (q1 * q_fac).to(q_ptr.dtype.element_ty)
            q2 = (q2 * q_fac).to(q_ptr.dtype.element_ty)
        if GATE == 1:
            d1 = d1 * decay
            d2 = d2 * decay
        d1 += scale * tl.dot(q1, do_t, input_precision=PREC) - tl.dot(w1, dvb, input_precision=PREC)
        d2 += scale * tl.dot(q2, do_t, input_precision=PREC) - tl.dot(w2, dvb, input_precision=PREC)
    if STORE_DH0:
        tl.store(dh0_ptr + bh.to(tl.int64) * K * V + o1, d1, mask=m1)
        tl.store(dh0_ptr + bh.to(tl.int64) * K * V + o2, d2, mask=m2)


@triton.jit
def _trace(m, BV: tl.constexpr):
    """Sum of the diagonal of a [BV, BV] tile."""
    vi = tl.arange(0, BV)
    return tl.sum(tl.sum(tl.where(vi[:, None] == vi[None, :], m, 0), axis=1), axis=0)


@triton.jit
def _exclusive_prefix(y, BT: tl.constexpr):
    """sum_{j<s} y_j for a [BT] vector, summing only the included terms (no total-minus-suffix)."""
    ii = tl.arange(0, BT)
    return tl.sum(tl.where(ii[None, :] < ii[:, None], y[None, :], 0), axis=1)


@triton.jit
def _weak_steps(b_ptr, b, bh, rows, rmask, T, BT: tl.constexpr):
    """Do the steps of this chunk (rows, cumulative gate b) after its first decay by at most WEAK_STEP on average
    (sum_i |b_i - b_{i-1}| <= WEAK_STEP (L - 1) over its L rows; for log-decays the chunk's span)? A scalar
    (int1) for the chunk's program."""
    later = rmask & (rows % BT > 0)
    b_prev = tl.load(b_ptr + _srow(bh, rows - 1, T), mask=later, other=0)
    steps = tl.sum(tl.where(later, tl.abs(b_prev - b), 0.0), axis=0)
    return steps <= WEAK_STEP * tl.sum(later.to(tl.float32), axis=0)


@triton.jit
def _suffix_plus_prefix(x, y, BT: tl.constexpr):
    """sum_{i>=s} x_i + sum_{j<s} y_j for [BT] vectors, as one masked row sum (no scan)."""
    ii = tl.arange(0, BT)
    return tl.sum(tl.where(ii[None, :] >= ii[:, None], x[None, :], y[None, :]), axis=1)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _linear_bwd_kernel(q_ptr, k_ptr, v_ptr, b_ptr, h_ptr, gs_ptr, do_ptr, a_ptr, flag_ptr,
                       dq_ptr, dk_ptr, dv_ptr, dg_ptr, da_ptr, e_ptr, dqo_ptr, dko_ptr, scale,
                       T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                       FIXED: tl.constexpr = False, ONE_SUM: tl.constexpr = False,
                       RELOAD: tl.constexpr = False, DG_WEAK: tl.constexpr = 0, GLA_PART: tl.constexpr = 0,
                       KDEC: tl.constexpr = False, HEADS_FIRST: tl.constexpr = False,
                       DG_PREFIX: tl.constexpr = False):
    """Per chunk gradients of linear attention. FIXED (RetNet's fixed decay, b_ptr holds g [H]): no gate
    gradient. GATE 2 on chunks flagged safe (see `_split_decay`)
    writes the final dq/dk to dqo/dko and the X / Y terms of the gate gradient to dq/dk (fp32); on the
    others it writes the inter-chunk parts of dq/dk (fp32) and the intra-chunk dA, and
    `_gla_intra_bwd_kernel` adds the intra parts. Both write the state term of dg.

    Gate gradient (scalar gate), chunk-local so that nothing large cancels under strong decay:
    dg_s = sum_{i>=s} q_i.dq_inter_i + sum_{i>=s, j<s} dA_ij A_ij + exp(b_last) <h_n, G_n>
           + sum_{j<s} k_j.dk_inter_j.
    DG_WEAK (data-dependent scalar gate): 1 = chunks whose steps decay by at most WEAK_STEP take fla's form of
    dg (a branch per chunk, both forms compiled); 2 / 3 = this launch does only those chunks / only the others
    (each compiled with its form alone; the caller launches both).
    GLA_PART (per-channel gate): 1 / 2 = this launch does only the chunks flagged safe / only the others, each
    compiled without the other kind's path (0: both kinds in one kernel, masked).
    KDEC (scalar gates): the keys' decay into the next state multiplied into k once, before the V loop, so that
    dv's state term joins its intra-chunk term in one accumulator (0: a separate product scaled per V tile).
    HEADS_FIRST: the grid is (B * H, NT) (`_chunk_and_head`).
    DG_PREFIX (data-dependent scalar gate): the gate gradient's state term exp(b_last) <h_n, G_n> is left out of dg
    (written in fp32) and the chunk's X_n = sum_i q_i.dq_inter_i and Y_n = sum_j k_j.dk_inter_j go to e_ptr
    [B*H, NT, 2]; `_add_state_term` forms the state terms from them (no h^T G product in the V loop)."""
    n, bh = _chunk_and_head(HEADS_FIRST)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    if GATE == 1 and not FIXED and DG_WEAK >= 2:  # this launch's kind of chunk only
        b_rows = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)
        if _weak_steps(b_ptr, b_rows, bh, rows, rmask, T, BT) != (DG_WEAK == 2):
            return
    if GATE == 2 and GLA_PART > 0:
        if (tl.load(flag_ptr + bh.to(tl.int64) * NT + n) != 0) != (GLA_PART == 1):
            return
    tok = (bb * T + rows).to(tl.int64) * H + hh
    last = (bb * T + tl.minimum(n * BT + BT, T) - 1).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m_k = rmask[:, None] & kmask[None, :]
    q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    # intra-chunk attention matrix (with decay); the decay of keys into the next state
    if GATE == 2:
        b = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        b_last = tl.load(b_ptr + last * K + kk, mask=kmask, other=0)
        k_dec = (k_t * tl.exp(tl.minimum(b_last[None, :] - b, 0))).to(k_t.dtype)
        if GLA_PART == 0:
            fast = (ii * 0 + tl.load(flag_ptr + bh.to(tl.int64) * NT + n)) != 0  # broadcast: masks take no scalars
        first = (bb * T + n * BT).to(tl.int64) * H + hh
        r = _midpoint(tl.load(b_ptr + first * K + kk, mask=kmask, other=0), b_last)
        if GLA_PART == 0:
            qf, kf = _split_decay(q_t, k_t, b, r)
            att_slow = tl.load(a_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :],
                               mask=rmask[:, None] & ~fast[None, :], other=0)
            att = tl.where(fast[None, :] & causal, tl.dot(qf, tl.trans(kf), input_precision=PREC), att_slow)
        elif GLA_PART == 1:
            qf, kf = _split_decay(q_t, k_t, b, r)
            att = tl.where(causal, tl.dot(qf, tl.trans(kf), input_precision=PREC), 0)
        else:  # unsafe chunks: A from `_gla_intra_kernel`
            att = tl.load(a_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], mask=rmask[:, None],
                          other=0)
    else:
        att = tl.dot(q_t, tl.trans(k_t), input_precision=PREC)
        if GATE == 1:
            b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, FIXED)
            att = att * tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
            kdec_f = tl.exp(tl.minimum(b_last - b, 0))
            if KDEC:
                k_dec = (k_t * kdec_f[:, None]).to(k_t.dtype)
        else:
            att = tl.where(causal, att, 0)
    att_t = tl.trans(att * scale).to(k_t.dtype)
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dk = tl.zeros([BT, BK], dtype=tl.float32)
    da = tl.zeros([BT, BT], dtype=tl.float32)
    hg = tl.zeros([BK], dtype=tl.float32)  # per-channel gate: sum_v h_n * G_n per key channel (dg's state term)
    # scalar gate: only <h_n, G_n> is needed, the trace of sum over V tiles of h^T G, one matmul per tile on
    # operands already in shared memory (the elementwise product cost 192 of the loop's 537 sm_90 instructions)
    hgm = tl.zeros([BV, BV], dtype=tl.float32)
    hbase = (bh.to(tl.int64) * NT + n) * K * V
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        vmask = vv < V
        m_v = rmask[:, None] & vmask[None, :]
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        h_t = tl.load(h_ptr + hbase + kk[:, None] * V + vv[None, :], mask=kmask[:, None] & vmask[None, :], other=0)
        g_t = tl.load(gs_ptr + hbase + kk[:, None] * V + vv[None, :], mask=kmask[:, None] & vmask[None, :], other=0)
        dq += tl.dot(do_t, tl.trans(h_t).to(do_t.dtype), input_precision=PREC)
        dk += tl.dot(v_t, tl.trans(g_t).to(v_t.dtype), input_precision=PREC)
        da += tl.dot(do_t, tl.trans(v_t), input_precision=PREC)
        dv = tl.dot(att_t, do_t, input_precision=PREC)
        if GATE == 2 or (GATE == 1 and KDEC):
            dv += tl.dot(k_dec, g_t.to(k_dec.dtype), input_precision=PREC)
        elif GATE == 1:
            dv += tl.dot(k_t, g_t.to(k_t.dtype), input_precision=PREC) * kdec_f[:, None]
        else:
            dv += tl.dot(k_t, g_t.to(k_t.dtype), input_precision=PREC)
        tl.store(dv_ptr + tok[:, None] * V + vv[None, :], dv.to(dv_ptr.dtype.element_ty), mask=m_v)
        if GATE == 2:
            hg += tl.sum(h_t.to(tl.float32) * g_t.to(tl.float32), axis=1)
        elif GATE == 1 and not FIXED and not DG_PREFIX:
            hgm += tl.dot(tl.trans(h_t), g_t.to(h_t.dtype), input_precision=PREC)
    da = tl.where(causal, da * scale, 0)
    if GATE == 2:
        if RELOAD:
            # q, k and the gate loaded again (L2) and the split factors formed again, so that none of these
            # [BT, K] tiles stays live through the V loop
            q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            b = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
            b_last = tl.load(b_ptr + last * K + kk, mask=kmask, other=0)
            r = _midpoint(tl.load(b_ptr + first * K + kk, mask=kmask, other=0), b_last)
            if GLA_PART != 2:
                qf, kf = _split_decay(q_t, k_t, b, r)
        dq = dq * scale * tl.exp(b)
        dk = dk * tl.exp(tl.minimum(b_last[None, :] - b, 0))
        if GLA_PART == 2:
            # unsafe chunks: the inter-chunk dq / dk and dA, for `_gla_intra_bwd_kernel`
            tl.store(dq_ptr + tok[:, None] * K + kk[None, :], dq, mask=m_k)
            tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk, mask=m_k)
            tl.store(da_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], da, mask=rmask[:, None])
        else:
            # safe chunks: the intra-chunk parts by two matmuls of the split-decay factors, i > j only
            # (the diagonal carries no gate and is left out of X, where it would only cancel)
            da_s = tl.where(ii[:, None] > ii[None, :], da, 0)
            dq_off = tl.dot(da_s.to(kf.dtype), kf, input_precision=PREC) * tl.exp(tl.minimum(b - r[None, :], 40.0))
            dk_off = tl.dot(tl.trans(da_s).to(qf.dtype), qf, input_precision=PREC) * \
                tl.exp(tl.minimum(r[None, :] - b, 40.0))
            qx = q_t.to(tl.float32)
            kx = k_t.to(tl.float32)
            da_diag = tl.sum(tl.where(ii[:, None] == ii[None, :], da, 0), axis=1)
            if GLA_PART == 1:
                fast_k = (kk * 0 + 1) != 0
            else:
                fast_k = (kk * 0 + tl.load(flag_ptr + bh.to(tl.int64) * NT + n)) != 0
            tl.store(dq_ptr + tok[:, None] * K + kk[None, :],
                     tl.where(fast_k[None, :], qx * (dq + dq_off) - kx * dk_off, dq), mask=m_k)
            tl.store(dk_ptr + tok[:, None] * K + kk[None, :], tl.where(fast_k[None, :], kx * dk, dk), mask=m_k)
            tl.store(dqo_ptr + tok[:, None] * K + kk[None, :],
                     (dq + dq_off + da_diag[:, None] * kx).to(dqo_ptr.dtype.element_ty), mask=m_k & fast_k[None, :])
            tl.store(dko_ptr + tok[:, None] * K + kk[None, :],
                     (dk + dk_off + da_diag[:, None] * qx).to(dko_ptr.dtype.element_ty), mask=m_k & fast_k[None, :])
            if GLA_PART == 0:
                tl.store(da_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], da,
                         mask=rmask[:, None] & ~fast[None, :])
        tl.store(e_ptr + (bh.to(tl.int64) * NT + n) * K + kk, tl.exp(b_last) * hg, mask=kmask)
    else:
        if GATE == 1 and FIXED:
            dq = dq * (scale * tl.exp(b))[:, None]
            dk = dk * kdec_f[:, None]
            da = da * tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
        elif GATE == 1:
            dq = dq * (scale * tl.exp(b))[:, None]
            dk = dk * kdec_f[:, None]
            y = tl.sum(k_t.to(tl.float32) * dk, axis=1)
            if DG_PREFIX:
                e_term = 0.0
                # q_i.dq_inter_i, summed over the chunk (and the exact form's x below starts from it)
                x_inter = tl.sum(q_t.to(tl.float32) * dq, axis=1)
                xy_at = e_ptr + (bh.to(tl.int64) * NT + n) * 2
                tl.store(xy_at, tl.sum(x_inter, axis=0))
                tl.store(xy_at + 1, tl.sum(y, axis=0))
            else:
                e_term = tl.exp(b_last) * _trace(hgm, BV)
            decay = tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
            if DG_WEAK == 1:
                weak = _weak_steps(b_ptr, b, bh, rows, rmask, T, BT)
            else:
                weak = DG_WEAK == 2
            if not weak:
                if DG_PREFIX:
                    x = x_inter
                else:  # (formed here, where only the exact form pays for it)
                    x = tl.sum(q_t.to(tl.float32) * dq, axis=1)
                strict = ii[:, None] > ii[None, :]
                # dA_ij A_ij for j < i (diagonal terms carry no gate); A recomputed rather than kept live
                m = tl.where(strict, da * tl.dot(q_t, tl.trans(k_t), input_precision=PREC) * decay, 0)
                x += tl.sum(m, axis=1) - tl.sum(m, axis=0)
                if ONE_SUM:
                    # one masked row sum instead of a reverse scan and a masked prefix sum (sm_90, 8 warps: 2,776
                    # instructions against 2,984)
                    dg = _suffix_plus_prefix(x, y, BT) + e_term
                else:
                    dg = tl.cumsum(x, axis=0, reverse=True) + e_term + _exclusive_prefix(y, BT)
                tl.store(dg_ptr + tok, dg, mask=rmask)
            da = da * decay
        else:
            dq = dq * scale
        dq += tl.dot(da.to(k_t.dtype), k_t, input_precision=PREC)
        dk += tl.dot(tl.trans(da).to(q_t.dtype), q_t, input_precision=PREC)
        if GATE == 1 and not FIXED and DG_WEAK > 0:
            if weak:
                # steps of at most WEAK_STEP on average: fla's form, q.dq - k.dk of the final gradients (the
                # diagonal terms cancel there to fp32 rounding, small beside the chunk's other terms unless
                # nearly every step decays strongly), suffix-summed, plus sum_j y_j and the state term
                xt = tl.sum(q_t.to(tl.float32) * dq - k_t.to(tl.float32) * dk, axis=1)
                dg = tl.cumsum(xt, axis=0, reverse=True) + (tl.sum(y, axis=0) + e_term)
                tl.store(dg_ptr + tok, dg, mask=rmask)
        tl.store(dq_ptr + tok[:, None] * K + kk[None, :], dq.to(dq_ptr.dtype.element_ty), mask=m_k)
        tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk.to(dk_ptr.dtype.element_ty), mask=m_k)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _gla_intra_bwd_kernel(q_ptr, k_ptr, b_ptr, flag_ptr, da_ptr, dqi_ptr, dki_ptr, dq_ptr, dk_ptr,
                          T, NT, H, K: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
                          BK: tl.constexpr, PREC: tl.constexpr):
    """Per-channel gate, by sub-blocks of BC rows: adds the intra-chunk parts
    dq_i += sum_{j<=i} dA_ij exp(b_i - b_j) k_j and dk_j += sum_{i>=j} dA_ij exp(b_i - b_j) q_i to
    the inter-chunk parts. For the gate gradient it overwrites its rows of dqi/dki with
    X = q (dq_inter + dq_offdiag) - k dk_offdiag and Y = k dk_inter (see `_gla_gate_grad_kernel`);
    the diagonal terms i = j carry no gate and are left out of X, where they would only cancel.
    Chunks flagged safe were finished by `_linear_bwd_kernel`."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    NC: tl.constexpr = BT // BC
    bb = bh // H
    hh = bh % H
    # one program per chunk (a program per sub-block cost 0.12 ms at T=32768 when every chunk is safe
    # and the programs only read their flag); the sub-blocks of an unsafe chunk are taken in turn
    if tl.load(flag_ptr + bh.to(tl.int64) * NT + n) == 0:
        for ic in range(NC):
            r0 = n * BT + ic * BC
            if r0 < T:
                rows = r0 + tl.arange(0, BC)
                rmask = rows < T
                allrows = n * BT + tl.arange(0, BT)
                amask = allrows < T
                tok = (bb * T + rows).to(tl.int64) * H + hh
                atok = (bb * T + allrows).to(tl.int64) * H + hh
                kk = tl.arange(0, BK)
                kmask = kk < K
                m_k = rmask[:, None] & kmask[None, :]
                m_a = amask[:, None] & kmask[None, :]
                li = tl.arange(0, BC)
                lcol = ic * BC + li  # local column index of this sub-block's rows
                q_i = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0).to(tl.float32)
                k_i = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0).to(tl.float32)
                b_i = tl.load(b_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
                b_r = tl.load(b_ptr + ((bb * T + r0).to(tl.int64) * H + hh) * K + kk, mask=kmask, other=0)
                e_row = tl.minimum(r0 + BC, T) - 1  # last valid row of the sub-block
                b_e = tl.load(b_ptr + ((bb * T + e_row).to(tl.int64) * H + hh) * K + kk, mask=kmask, other=0)
                k_a = tl.load(k_ptr + atok[:, None] * K + kk[None, :], mask=m_a, other=0)
                q_a = tl.load(q_ptr + atok[:, None] * K + kk[None, :], mask=m_a, other=0)
                b_a = tl.load(b_ptr + atok[:, None] * K + kk[None, :], mask=m_a, other=0)
                da_base = da_ptr + bh.to(tl.int64) * T * BT
                # this sub-block's rows of dA ([BC, BT]) and its columns ([BT, BC])
                da_rows = tl.load(da_base + rows[:, None] * BT + tl.arange(0, BT)[None, :], mask=rmask[:, None], other=0)
                da_cols = tl.load(da_base + allrows[:, None] * BT + lcol[None, :], mask=amask[:, None], other=0)
                # off-diagonal parts, split at the sub-block boundary so both factors are <= 1
                k_s = tl.where((allrows < r0)[:, None], k_a.to(tl.float32) * tl.exp(tl.minimum(b_r[None, :] - b_a, 0)), 0)
                dq = tl.dot(da_rows.to(k_a.dtype), k_s.to(k_a.dtype), input_precision=PREC)
                dq = dq * tl.exp(tl.minimum(b_i - b_r[None, :], 0))
                q_s = tl.where((allrows > e_row)[:, None], q_a.to(tl.float32) * tl.exp(tl.minimum(b_a - b_e[None, :], 0)), 0)
                dk = tl.dot(tl.trans(da_cols).to(q_a.dtype), q_s.to(q_a.dtype), input_precision=PREC)
                dk = dk * tl.exp(tl.minimum(b_e[None, :] - b_i, 0))
                # diagonal block, elementwise
                for j in range(BC):
                    jt = (bb * T + r0 + j).to(tl.int64) * H + hh
                    jmask = kmask & (kk * 0 + r0 + j < T)
                    k_j = tl.load(k_ptr + jt * K + kk, mask=jmask, other=0).to(tl.float32)
                    q_j = tl.load(q_ptr + jt * K + kk, mask=jmask, other=0).to(tl.float32)
                    b_j = tl.load(b_ptr + jt * K + kk, mask=jmask, other=0)
                    # column j of dA restricted to this block's rows, and row j restricted to its columns
                    da_col_j = tl.sum(tl.where(tl.arange(0, BT)[None, :] == ic * BC + j, da_rows, 0), axis=1)
                    da_row_j = tl.sum(tl.where(tl.arange(0, BT)[:, None] == ic * BC + j, da_cols, 0), axis=0)
                    lower = li > j  # rows i > j (the diagonal is added below)
                    upper = li < j  # columns i < j
                    dq += tl.where(lower[:, None], da_col_j[:, None] * k_j[None, :] * tl.exp(tl.minimum(b_i - b_j[None, :], 0)), 0)
                    dk += tl.where(upper[:, None], da_row_j[:, None] * q_j[None, :] * tl.exp(tl.minimum(b_j[None, :] - b_i, 0)), 0)
                dq_inter = tl.load(dqi_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
                dk_inter = tl.load(dki_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
                da_diag = tl.sum(tl.where(tl.arange(0, BT)[None, :] == lcol[:, None], da_rows, 0), axis=1)
                tl.store(dqi_ptr + tok[:, None] * K + kk[None, :], q_i * (dq_inter + dq) - k_i * dk, mask=m_k)
                tl.store(dki_ptr + tok[:, None] * K + kk[None, :], k_i * dk_inter, mask=m_k)
                dq += dq_inter + da_diag[:, None] * k_i
                dk += dk_inter + da_diag[:, None] * q_i
                tl.store(dq_ptr + tok[:, None] * K + kk[None, :], dq.to(dq_ptr.dtype.element_ty), mask=m_k)
                tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk.to(dk_ptr.dtype.element_ty), mask=m_k)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _gla_gate_grad_kernel(x_ptr, y_ptr, e_ptr, dg_ptr, T, NT, H, K: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, PREC: tl.constexpr):
    """Per-channel gate gradient of one chunk: dg_s = sum_{i>=s} X_i + E + sum_{j<s} Y_j, where E is the
    state term exp(b_last) <h_n, G_n>. Only included terms are summed (no total-minus-prefix). (The suffix
    sum of X as a tf32x3 matmul with a 0/1 triangle, at 8 warps, took this kernel from 0.85 to 1.57 ms on
    the H200 at T=32768: unlike the gate pass's, this tl.cumsum was not the cost.)"""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m_k = rmask[:, None] & kmask[None, :]
    x = tl.load(x_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    y = tl.load(y_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    e = tl.load(e_ptr + (bh.to(tl.int64) * NT + n) * K + kk, mask=kmask, other=0)
    ii = tl.arange(0, BT)
    before = tl.where(ii[None, :] < ii[:, None], 1.0, 0.0)
    dg = tl.cumsum(x, axis=0, reverse=True) + e[None, :] + tl.dot(before, y, input_precision=PREC)
    tl.store(dg_ptr + tok[:, None] * K + kk[None, :], dg.to(dg_ptr.dtype.element_ty), mask=m_k)


@triton.jit(do_not_specialize=['T', 'H'])
def _ut_diag_kernel(k_ptr, beta_ptr, b_ptr, d_ptr, T, H, K: tl.constexpr, BT: tl.constexpr,
                    BC: tl.constexpr, BK: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """(I + L_cc)^-1 of one BC x BC diagonal block of the chunk's L = strict_tril(beta_i k_i.k_j exp(b_i - b_j)),
    by forward substitution; stored as rows of d ([B*H, T, BC], fp32) for `_wy_fwd_kernel`.

    A launch of its own so that the sequential substitution runs on a 16 x 16 tile in one warp
    (shuffles, no block-wide barriers) instead of on the masked BT x BT tile of the chunk kernel."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    NC: tl.constexpr = BT // BC
    n = pid // NC
    ic = pid % NC
    bb = bh // H
    hh = bh % H
    r0 = n * BT + ic * BC
    if r0 < T:
        rows = r0 + tl.arange(0, BC)
        rmask = rows < T
        tok = (bb * T + rows).to(tl.int64) * H + hh
        kk = tl.arange(0, BK)
        k_c = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=rmask[:, None] & (kk < K)[None, :], other=0)
        beta = tl.load(beta_ptr + tok, mask=rmask, other=0).to(tl.float32)
        li = tl.arange(0, BC)
        strict = li[:, None] > li[None, :]
        kkt = tl.dot(k_c, tl.trans(k_c), input_precision=PREC)
        if GATE == 1:
            b = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)
            x = -kkt * beta[:, None] * tl.exp(tl.where(strict, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
        else:
            x = tl.where(strict, -kkt * beta[:, None], 0)
        # x_i = -l_i - sum_{j<i} l_ij x_j; rows j < i are final when row i is formed; D^-1 = I + X
        for i in range(1, BC):
            sel = li[:, None] == i
            a = tl.sum(tl.where(sel, x, 0), axis=0)
            new = a + tl.sum(a[:, None] * x, axis=0)
            x = tl.where(sel, new[None, :], x)
        x = x + tl.where(li[:, None] == li[None, :], 1.0, 0.0)
        tl.store(d_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BC + li[None, :], x, mask=rmask[:, None])


@triton.jit(do_not_specialize=['T', 'H'])
def _wy_fwd_kernel(k_ptr, v_ptr, beta_ptr, b_ptr, d_ptr, w_ptr, u_ptr, tm_ptr, kd_ptr, dl_ptr,
                   T, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr, LOG2NB: tl.constexpr,
                   GATE: tl.constexpr, STORE_TM: tl.constexpr, PREC: tl.constexpr,
                   STORE_KD: tl.constexpr = False, LOAD_TM: tl.constexpr = False):
    """UT transform of one chunk: Tm = (I + L)^-1 with L = strict_tril(beta_i k_i.k_j exp(b_i - b_j)),
    w = Tm (beta exp(b) k), u = Tm (beta v). The inverses of the diagonal blocks come from
    `_ut_diag_kernel` (d_ptr). STORE_KD (gated): also the keys as they enter the next state,
    k exp(b_last - b), and exp(b_last) per chunk, for the scans' PRE path (PREP_SCALAR).
    LOAD_TM: Tm is read from tm_ptr (stored by the forward, SAVE_TM) instead of formed (d_ptr unused)."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m_k = rmask[:, None] & kmask[None, :]
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    beta = tl.load(beta_ptr + tok, mask=rmask, other=0).to(tl.float32)
    ii = tl.arange(0, BT)
    # (I + L)^-1 in two steps. (1) D^-1, the inverse of the block diagonal I + L_blockdiag, is loaded
    # (formed by `_ut_diag_kernel`). (2) With M = D^-1 L_offdiag (strictly block-lower, M^NB = 0):
    # (I + L)^-1 = (I + M)^-1 D^-1 = (I - M)(I + M^2)(I + M^4)... D^-1, a few matmuls.
    if GATE == 1:
        b = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)
    if LOAD_TM:
        tm = tl.load(tm_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], mask=rmask[:, None],
                     other=0).to(tl.float32)
    else:
        same_blk = (ii[:, None] // BC) == (ii[None, :] // BC)
        tm = tl.load(d_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BC + (ii % BC)[None, :],
                     mask=rmask[:, None] & same_blk, other=0)
    if LOG2NB > 0 and not LOAD_TM:
        kkt = tl.dot(k_t, tl.trans(k_t), input_precision=PREC)
        off = (ii[:, None] // BC) > (ii[None, :] // BC)
        if GATE == 1:
            lmat = kkt * beta[:, None] * tl.exp(tl.where(off, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
        else:
            lmat = tl.where(off, kkt * beta[:, None], 0)
        eye = tl.where(ii[:, None] == ii[None, :], 1.0, 0.0)
        m = tl.dot(tm, lmat, input_precision=PREC)
        p = eye - m
        for _s in tl.static_range(1, LOG2NB):
            m = tl.dot(m, m, input_precision=PREC)
            p = p + tl.dot(p, m, input_precision=PREC)
        tm = tl.dot(p, tm, input_precision=PREC)
    if STORE_TM:
        tl.store(tm_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], tm, mask=rmask[:, None])
    if GATE == 1:
        kb = k_t * (beta * tl.exp(b))[:, None]
        if STORE_KD:
            NT = tl.cdiv(T, BT)
            b_last = tl.sum(tl.where(rows == tl.minimum(n * BT + BT, T) - 1, b, 0), axis=0)
            kd = k_t * tl.exp(tl.minimum(b_last - b, 0))[:, None]
            tl.store(kd_ptr + tok[:, None] * K + kk[None, :], kd.to(kd_ptr.dtype.element_ty), mask=m_k)
            tl.store(dl_ptr + bh.to(tl.int64) * NT + n, tl.exp(b_last))
    else:
        kb = k_t * beta[:, None]
    w = tl.dot(tm.to(k_t.dtype), kb.to(k_t.dtype), input_precision=PREC)
    tl.store(w_ptr + tok[:, None] * K + kk[None, :], w.to(w_ptr.dtype.element_ty), mask=m_k)
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        m_v = rmask[:, None] & (vv < V)[None, :]
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        u = tl.dot(tm.to(v_t.dtype), (v_t * beta[:, None]).to(v_t.dtype), input_precision=PREC)
        tl.store(u_ptr + tok[:, None] * V + vv[None, :], u.to(u_ptr.dtype.element_ty), mask=m_v)


@triton.jit(do_not_specialize=['T', 'H'])
def _dv_local_kernel(q_ptr, k_ptr, b_ptr, do_ptr, dvl_ptr, qd_ptr, scale,
                     T, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                     BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr,
                     STORE_QD: tl.constexpr = False):
    """dv_local = scale * P^T do with P the decayed causal intra-chunk q k^T (delta-rule backward).
    STORE_QD (gated): also q exp(b) for the backward scan's PRE path."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    m_k = rmask[:, None] & (kk < K)[None, :]
    q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    # P^T directly: pt[j, i] = k_j . q_i * exp(b_i - b_j) for i >= j
    pt = tl.dot(k_t, tl.trans(q_t), input_precision=PREC)
    if GATE == 1:
        b = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)
        pt = pt * tl.exp(tl.where(tl.trans(causal), tl.minimum(b[None, :] - b[:, None], 0), float("-inf")))
        if STORE_QD:
            tl.store(qd_ptr + tok[:, None] * K + kk[None, :], (q_t * tl.exp(b)[:, None]).to(qd_ptr.dtype.element_ty),
                     mask=m_k)
    else:
        pt = tl.where(tl.trans(causal), pt, 0)
    pt = (pt * scale).to(q_t.dtype)
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        m_v = rmask[:, None] & (vv < V)[None, :]
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        dvl = tl.dot(pt, do_t, input_precision=PREC)
        tl.store(dvl_ptr + tok[:, None] * V + vv[None, :], dvl.to(dvl_ptr.dtype.element_ty), mask=m_v)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _delta_bwd_dqk_kernel(q_ptr, k_ptr, b_ptr, w_ptr, u_ptr, h_ptr, gs_ptr, do_ptr,
                          dq_ptr, dk_ptr, db_ptr, y_ptr, e_ptr, scale,
                          T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Delta rule backward, part 1 (per chunk): the gradients that flow through the output and the
    state, with v_new = u - w h recomputed:
      o = scale (q exp(b) h + P v_new),  h' = exp(b_last) h + (k exp(b_last - b))^T v_new.
    Writes dq (final), dk so far (fp32), and the gate terms db (suffix-summed later), y = k.dk_inter
    (prefix-summed later) and e = exp(b_last) <h, G>."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    last = (bb * T + tl.minimum(n * BT + BT, T) - 1).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m_k = rmask[:, None] & kmask[None, :]
    q_t = tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    w_t = tl.load(w_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    strict = ii[:, None] > ii[None, :]
    dq = tl.zeros([BT, BK], dtype=tl.float32)
    dkh = tl.zeros([BT, BK], dtype=tl.float32)   # (v_new G^T) before the decay factor
    dp = tl.zeros([BT, BT], dtype=tl.float32)
    # sum_v h * G per key channel (here, unlike in `_linear_bwd_kernel`, the trace of h^T G matmuls was slower
    # on the H200: dqk 1.43 -> 1.64 ms for the gated delta rule at T=32768, V tiles of 32)
    hg = tl.zeros([BK], dtype=tl.float32)
    hbase = (bh.to(tl.int64) * NT + n) * K * V
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        vmask = vv < V
        m_v = rmask[:, None] & vmask[None, :]
        m_kv = kmask[:, None] & vmask[None, :]
        h_t = tl.load(h_ptr + hbase + kk[:, None] * V + vv[None, :], mask=m_kv, other=0)
        g_t = tl.load(gs_ptr + hbase + kk[:, None] * V + vv[None, :], mask=m_kv, other=0)
        u_t = tl.load(u_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        vnew = (u_t.to(tl.float32) - tl.dot(w_t, h_t.to(w_t.dtype), input_precision=PREC)).to(u_t.dtype)
        dq += tl.dot(do_t, tl.trans(h_t).to(do_t.dtype), input_precision=PREC)
        dp += tl.dot(do_t, tl.trans(vnew), input_precision=PREC)
        dkh += tl.dot(vnew, tl.trans(g_t).to(vnew.dtype), input_precision=PREC)
        if GATE == 1:
            hg += tl.sum(h_t.to(tl.float32) * g_t.to(tl.float32), axis=1)
    dp = tl.where(causal, dp * scale, 0)
    if GATE == 1:
        b, b_last = _scalar_decay(b_ptr, bh, rmask, hh, n, T, BT, False)
        decay = tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
        dq = dq * (scale * tl.exp(b))[:, None]
        # db collects the terms whose gate factor spans steps <= i; dg is its suffix sum plus the
        # state terms, so that no large terms cancel under strong decay
        db = tl.sum(q_t.to(tl.float32) * dq, axis=1)
        dk = dkh * tl.exp(tl.minimum(b_last - b, 0))[:, None]
        tl.store(y_ptr + tok, tl.sum(k_t.to(tl.float32) * dk, axis=1), mask=rmask)
        tl.store(e_ptr + bh.to(tl.int64) * NT + n, tl.exp(b_last) * tl.sum(hg, axis=0))
        p = tl.dot(q_t, tl.trans(k_t), input_precision=PREC) * decay
        dpp = tl.where(strict, dp * p, 0)  # the diagonal carries no gate
        db += tl.sum(dpp, axis=1) - tl.sum(dpp, axis=0)
        tl.store(db_ptr + _srow(bh, rows, T), db, mask=rmask)
        dp = dp * decay
    else:
        dq = dq * scale
        dk = dkh
    dq += tl.dot(dp.to(k_t.dtype), k_t, input_precision=PREC)
    dk += tl.dot(tl.trans(dp).to(q_t.dtype), q_t, input_precision=PREC)
    tl.store(dq_ptr + tok[:, None] * K + kk[None, :], dq.to(dq_ptr.dtype.element_ty), mask=m_k)
    tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk.to(dk_ptr.dtype.element_ty), mask=m_k)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _delta_bwd_wy_kernel(k_ptr, v_ptr, beta_ptr, b_ptr, tm_ptr, h_ptr, dvn_ptr, dkp_ptr, db_ptr, y_ptr, e_ptr,
                         dk_ptr, dv_ptr, dbeta_ptr, dg_ptr,
                         T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """Delta rule backward, part 2 (per chunk): through the UT transform
    w = Tm (beta exp(b) k), u = Tm (beta v), Tm = (I + L)^-1, L = strict_tril(beta_i k_i.k_j exp(b_i - b_j)),
    with dw = -dv_new h^T and du = dv_new. Finishes dk, writes dv, dbeta and dg."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    m_k = rmask[:, None] & kmask[None, :]
    k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
    beta = tl.load(beta_ptr + tok, mask=rmask, other=0).to(tl.float32)
    ii = tl.arange(0, BT)
    causal = ii[:, None] >= ii[None, :]
    strict = ii[:, None] > ii[None, :]
    tm = tl.load(tm_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], mask=rmask[:, None], other=0)
    tm_t = tl.trans(tm).to(k_t.dtype)
    dw = tl.zeros([BT, BK], dtype=tl.float32)
    dtm = tl.zeros([BT, BT], dtype=tl.float32)
    dbeta = tl.zeros([BT], dtype=tl.float32)
    hbase = (bh.to(tl.int64) * NT + n) * K * V
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        vmask = vv < V
        m_v = rmask[:, None] & vmask[None, :]
        h_t = tl.load(h_ptr + hbase + kk[:, None] * V + vv[None, :], mask=kmask[:, None] & vmask[None, :], other=0)
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        dvn = tl.load(dvn_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0).to(k_t.dtype)
        dw -= tl.dot(dvn, tl.trans(h_t).to(k_t.dtype), input_precision=PREC)
        dru = tl.dot(tm_t, dvn, input_precision=PREC)
        tl.store(dv_ptr + tok[:, None] * V + vv[None, :], (dru * beta[:, None]).to(dv_ptr.dtype.element_ty), mask=m_v)
        dbeta += tl.sum(dru * v_t.to(tl.float32), axis=1)
        dtm += tl.dot(dvn, tl.trans((v_t * beta[:, None]).to(k_t.dtype)), input_precision=PREC)
    kf = k_t.to(tl.float32)
    if GATE == 1:
        b = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)
        gam = tl.exp(b)
        kb = kf * (beta * gam)[:, None]
    else:
        kb = kf * beta[:, None]
    drw = tl.dot(tm_t, dw.to(k_t.dtype), input_precision=PREC)
    rk = tl.sum(drw * kf, axis=1)
    if GATE == 1:
        dk = drw * (beta * gam)[:, None]
        dbeta += rk * gam
        db = rk * gam * beta
    else:
        dk = drw * beta[:, None]
        dbeta += rk
    dtm += tl.dot(dw.to(k_t.dtype), tl.trans(kb.to(k_t.dtype)), input_precision=PREC)
    # Tm = (I + L)^-1  ->  dL = -Tm^T dTm Tm^T on the strict lower triangle
    dl = -tl.dot(tl.trans(tm), tl.dot(dtm, tl.trans(tm), input_precision=PREC), input_precision=PREC)
    dl = tl.where(strict, dl, 0)
    kkt = tl.dot(k_t, tl.trans(k_t), input_precision=PREC)
    if GATE == 1:
        decay = tl.exp(tl.where(causal, tl.minimum(b[:, None] - b[None, :], 0), float("-inf")))
        dll = dl * kkt * beta[:, None] * decay
        db += tl.sum(dll, axis=1) - tl.sum(dll, axis=0)
        dl = dl * decay
    dbeta += tl.sum(dl * kkt, axis=1)
    dlb = (dl * beta[:, None]).to(k_t.dtype)
    dk += tl.dot(dlb, k_t, input_precision=PREC)
    dk += tl.dot(tl.trans(dlb), k_t, input_precision=PREC)
    dk += tl.load(dkp_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0).to(tl.float32)
    tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk.to(dk_ptr.dtype.element_ty), mask=m_k)
    tl.store(dbeta_ptr + tok, dbeta, mask=rmask)
    if GATE == 1:
        db += tl.load(db_ptr + _srow(bh, rows, T), mask=rmask, other=0)
        y = tl.load(y_ptr + tok, mask=rmask, other=0)
        e = tl.load(e_ptr + bh.to(tl.int64) * NT + n)
        # dg_s = sum_{i>=s} db_i + exp(b_last) <h, G> + sum_{j<s} k_j.dk_inter_j
        dg = tl.cumsum(db, axis=0, reverse=True) + e + _exclusive_prefix(y, BT)
        tl.store(dg_ptr + tok, dg, mask=rmask)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _delta_bwd_dw_kernel(h_ptr, dvn_ptr, dw_ptr, T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                         BK: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr):
    """WY_BWD_SPLIT, part 1 of the backward through the UT transform (per chunk): dw = -dv_new h^T, stored in
    the inputs' dtype (what `_delta_bwd_wy_kernel` rounds it to before its matmuls). It holds one [BT, K]
    accumulator and reads h, the largest input, at high occupancy (under 128 registers at 8 warps on sm_90)."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    kk = tl.arange(0, BK)
    kmask = kk < K
    dt = dw_ptr.dtype.element_ty
    hbase = (bh.to(tl.int64) * NT + n) * K * V
    dw = tl.zeros([BT, BK], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        vmask = vv < V
        h_t = tl.load(h_ptr + hbase + kk[:, None] * V + vv[None, :], mask=kmask[:, None] & vmask[None, :], other=0)
        dvn = tl.load(dvn_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None] & vmask[None, :], other=0)
        dw -= tl.dot(dvn.to(dt), tl.trans(h_t).to(dt), input_precision=PREC)
    tl.store(dw_ptr + tok[:, None] * K + kk[None, :], dw.to(dt), mask=rmask[:, None] & kmask[None, :])


@triton.jit
def _wy_split_v_loop(tm, tm_t, beta, v_ptr, dvn_ptr, dv_ptr, tok, rmask, BT: tl.constexpr, V: tl.constexpr,
                     BV: tl.constexpr, PREC: tl.constexpr):
    """The u side of the UT transform (du = dv_new) over V tiles: stores dv = beta (Tm^T dv_new); returns the
    dbeta terms of v and this side's part of dL = -Tm^T dTm Tm^T, which is -(Tm^T dv_new) u^T with
    u = Tm (beta v) formed again per tile (a matmul a tile instead of a [BT, BT] sandwich after the loop)."""
    dl = tl.zeros([BT, BT], dtype=tl.float32)
    dbeta = tl.zeros([BT], dtype=tl.float32)
    for iv in range(tl.cdiv(V, BV)):
        vv = iv * BV + tl.arange(0, BV)
        m_v = rmask[:, None] & (vv < V)[None, :]
        v_t = tl.load(v_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        dvn = tl.load(dvn_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0).to(tm.dtype)
        dru = tl.dot(tm_t, dvn, input_precision=PREC)
        tl.store(dv_ptr + tok[:, None] * V + vv[None, :], (dru * beta[:, None]).to(dv_ptr.dtype.element_ty), mask=m_v)
        dbeta += tl.sum(dru * v_t.to(tl.float32), axis=1)
        u = tl.dot(tm, (v_t * beta[:, None]).to(tm.dtype), input_precision=PREC)
        dl -= tl.dot(dru.to(tm.dtype), tl.trans(u.to(tm.dtype)), input_precision=PREC)
    return dl, dbeta


@triton.jit
def _wy_split_k_loop(dl, tm, tm_t, bg, k_ptr, dw_ptr, tok, rmask, BT: tl.constexpr, K: tl.constexpr,
                     BK: tl.constexpr, PREC: tl.constexpr):
    """The w side (dw) over K tiles: adds -(Tm^T dw) w^T to dL (w = Tm (bg k) formed again, bg = beta exp(b));
    returns dL, k k^T and rk = rowsum((Tm^T dw) k), the gradient of bg."""
    kkt = tl.zeros([BT, BT], dtype=tl.float32)
    rk = tl.zeros([BT], dtype=tl.float32)
    for ik in range(tl.cdiv(K, BK)):
        kk = ik * BK + tl.arange(0, BK)
        m_k = rmask[:, None] & (kk < K)[None, :]
        k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        dw = tl.load(dw_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        drw = tl.dot(tm_t, dw, input_precision=PREC)
        rk += tl.sum(drw * k_t.to(tl.float32), axis=1)
        w = tl.dot(tm, (k_t * bg[:, None]).to(k_t.dtype), input_precision=PREC)
        dl -= tl.dot(drw.to(k_t.dtype), tl.trans(w.to(k_t.dtype)), input_precision=PREC)
        kkt += tl.dot(k_t, tl.trans(k_t), input_precision=PREC)
    return dl, kkt, rk


@triton.jit
def _wy_split_dk(sym, tm_t, bg, k_ptr, dw_ptr, dkp_ptr, dk_ptr, tok, rmask, K: tl.constexpr, BK: tl.constexpr,
                 PREC: tl.constexpr):
    """dk = dk_part + (Tm^T dw) bg + sym k over K tiles, sym = dA + dA^T for the gradient dA of k k^T."""
    for ik in range(tl.cdiv(K, BK)):
        kk = ik * BK + tl.arange(0, BK)
        m_k = rmask[:, None] & (kk < K)[None, :]
        k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        dw = tl.load(dw_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        dk = tl.load(dkp_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0).to(tl.float32)
        dk += tl.dot(tm_t, dw, input_precision=PREC) * bg[:, None] + tl.dot(sym, k_t, input_precision=PREC)
        tl.store(dk_ptr + tok[:, None] * K + kk[None, :], dk.to(dk_ptr.dtype.element_ty), mask=m_k)


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _delta_bwd_wy_split_kernel(k_ptr, v_ptr, beta_ptr, b_ptr, tmd_ptr, dvn_ptr, dw_ptr, dkp_ptr, db_ptr, y_ptr,
                               e_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr,
                               T, NT, H, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr,
                               BK: tl.constexpr, BV: tl.constexpr, GATE: tl.constexpr, PREC: tl.constexpr):
    """WY_BWD_SPLIT, part 2 (per chunk): the rest of `_delta_bwd_wy_kernel` given dw (`_delta_bwd_dw_kernel`),
    with Tm in the inputs' dtype (tmd_ptr; the forward's w and u took it so rounded). dL is accumulated tile by
    tile as -(Tm^T dv_new) u^T - (Tm^T dw) w^T over V and K tiles (BK), so that no [BT, K] tile is held whole
    and no matmul result after a loop feeds another matmul: Triton lays such chained matmuls out with all warps
    along the rows (warpsPerCTA [num_warps, 1]), which at BT = 64 and 8 warps holds every [BT, BT] tile twice,
    and that is where `_delta_bwd_wy_kernel`'s registers went."""
    n = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    rows = n * BT + tl.arange(0, BT)
    rmask = rows < T
    tok = (bb * T + rows).to(tl.int64) * H + hh
    ii = tl.arange(0, BT)
    strict = ii[:, None] > ii[None, :]
    beta = tl.load(beta_ptr + tok, mask=rmask, other=0).to(tl.float32)
    # a loaded (not converted) Tm is a shared-memory matmul operand, as is its transpose: no registers
    tm = tl.load(tmd_ptr + (bh.to(tl.int64) * T + rows)[:, None] * BT + ii[None, :], mask=rmask[:, None], other=0)
    tm_t = tl.trans(tm)
    if GATE == 1:
        bg = beta * tl.exp(tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0))
    else:
        bg = beta
    dl, dbeta = _wy_split_v_loop(tm, tm_t, beta, v_ptr, dvn_ptr, dv_ptr, tok, rmask, BT, V, BV, PREC)
    dl, kkt, rk = _wy_split_k_loop(dl, tm, tm_t, bg, k_ptr, dw_ptr, tok, rmask, BT, K, BK, PREC)
    # L_ij = beta_i k_i.k_j exp(b_i - b_j) for i > j
    if GATE == 1:
        b = tl.load(b_ptr + _srow(bh, rows, T), mask=rmask, other=0)  # loaded again: not held through the loops
        dl = tl.where(strict, dl * tl.exp(tl.minimum(b[:, None] - b[None, :], 0)), 0)
    else:
        dl = tl.where(strict, dl, 0)
    p = dl * kkt
    prow = tl.sum(p, axis=1)
    if GATE == 1:  # all of the gate gradient before the dk loop, so that none of it is live there
        dbeta += rk * tl.exp(b) + prow
        db = rk * bg + beta * prow - tl.sum(p * beta[:, None], axis=0)
        db += tl.load(db_ptr + _srow(bh, rows, T), mask=rmask, other=0)
        y = tl.load(y_ptr + tok, mask=rmask, other=0)
        e = tl.load(e_ptr + bh.to(tl.int64) * NT + n)
        # dg_s = sum_{i>=s} db_i + exp(b_last) <h, G> + sum_{j<s} k_j.dk_inter_j
        tl.store(dg_ptr + tok, _suffix_plus_prefix(db, y, BT) + e, mask=rmask)
    else:
        dbeta += rk + prow
    tl.store(dbeta_ptr + tok, dbeta, mask=rmask)
    dlb = (dl * beta[:, None]).to(tm.dtype)
    _wy_split_dk(dlb + tl.trans(dlb), tm_t, bg, k_ptr, dw_ptr, dkp_ptr, dk_ptr, tok, rmask, K, BK, PREC)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------

def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def _prec(x: torch.Tensor) -> str:
    # fp32 inputs get exact fp32 products (the contract's fp32 tolerance); half inputs use bf16/fp16 MMA
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _gate_kind(g) -> int:
    """0 no gate, 1 scalar per head and step ([B, T, H]) or fixed per head ([H], see `_fixed`), 2 per channel."""
    return 0 if g is None else (2 if g.dim() == 4 else 1)


def _fixed(g) -> bool:
    """A fixed per-head decay g [H] (RetNet, no gradient): the kernels form the chunk's cumulative decay
    from the row index (`_scalar_decay`), with no pass over the sequence and no gate gradient."""
    return g is not None and g.dim() == 1


def _chunk_cumsum(g, BT, flags=False, levels=False, top=GLA_SAFE_SPAN / 2):
    """Within-chunk cumulative gate (fp32); with flags=True also the int32 flags of chunks safe for a
    factorised decay (see GLA_SAFE_SPAN): per chunk [B*H, NT] for per-channel gates, per sequence [B*H]
    (1: all its chunks safe) for scalar ones; levels=True, scalar gates: 2 = every chunk spans at most
    top (FOLD 3 / 4: GLA_SAFE_SPAN / 2), 1 = at most GLA_SAFE_SPAN, 0 = wider."""
    if g is None:
        return (None, None) if flags else None
    B, T, H = g.shape[:3]
    NT = triton.cdiv(T, BT)
    vec = g.dim() == 4
    D = g.shape[3] if vec else 1
    b = torch.empty(g.shape if vec else (B, H, T), dtype=torch.float32, device=g.device)  # scalar: [B, H, T]
    if not flags:
        flag = None
    else:
        flag = torch.empty(B * H, NT, dtype=torch.int32, device=g.device) if vec else \
            torch.full((B * H,), 2 if levels else 1, dtype=torch.int32, device=g.device)
    _chunk_cumsum_kernel[(NT, B * H)](g, b, flag, T, NT, H=H, D=D, BT=BT, BD=_pow2(D) if vec else 1, VEC=vec,
                                      FLAG=flags, SAFE=GLA_SAFE_SPAN, LEVELS=levels and flags and not vec, TOP=top)
    return (b, flag) if flags else b


def _use_prep(cfg, gate, backward):
    """Does this scan take precomputed decayed operands (PREP_SCALAR / PREP_CHANNEL)?"""
    if gate == 2:
        return bool(cfg.get("PREP_CHANNEL", 0))
    if gate == 1:
        return cfg.get("PREP_SCALAR", 0) >= (1 if backward else 2)
    return False


def _bwd_block_v(cfg, gate):
    """V tile of the per-chunk backward kernels: GATED_BWD_BLOCK_V for gated inputs when set."""
    if gate and cfg.get("GATED_BWD_BLOCK_V", 0):
        return cfg["GATED_BWD_BLOCK_V"]
    return cfg["BWD_BLOCK_V"]


def _chunk_grid(NT, BH, heads_first):
    """The launch grid of a chunk-parallel kernel that reads its ids with `_chunk_and_head`."""
    return (BH, NT) if heads_first else (NT, BH)


def _gate_prep(g, x, BT, keys, store_b, heads_first=False, warps=0):
    """Chunk-parallel gate pass (`_gate_prep_kernel`): returns b (or None), the per-channel safe flags
    (or None), x decayed (keys: x exp(b_last - b), else x exp(b)) and exp(b_last) per chunk."""
    B, T, H, K = x.shape
    NT = triton.cdiv(T, BT)
    vec = g.dim() == 4
    b = torch.empty(g.shape if vec else (B, H, T), dtype=torch.float32, device=g.device) if store_b else None
    flag = torch.empty(B * H, NT, dtype=torch.int32, device=g.device) if vec else None
    xd = torch.empty_like(x)
    d = torch.empty((B * H, NT, K) if vec else (B * H, NT), dtype=torch.float32, device=g.device)
    # per-channel: 8 warps (at 4 the fp32 chunk tile and its cumulative sum took all 255 registers on sm_90)
    grid = _chunk_grid(NT, B * H, heads_first)
    _gate_prep_kernel[grid](g, x, b, flag, xd, d, T, NT, H, K=K, BT=BT, BK=_pow2(K), VEC=vec, KEYS=keys,
                            STORE_B=store_b, SAFE=GLA_SAFE_SPAN, HEADS_FIRST=heads_first,
                            num_warps=warps or (8 if vec else 4))
    return b, flag, xd, d


def _launch_opts(cfg, kind="scan"):
    """Launch options of one kernel family: "scan" (forward state scan), "scan_bwd" (backward state scan),
    "out" (forward output), "bwd" / "bwd_gated" (per-chunk gradients, no gate / a gate)."""
    if kind == "scan_bwd":
        return {"num_warps": cfg.get("scan_bwd_num_warps", 0) or cfg["num_warps"],
                "num_stages": cfg.get("scan_bwd_num_stages", 0) or cfg["num_stages"]}
    if kind == "bwd":
        return {"num_warps": cfg["bwd_num_warps"], "num_stages": cfg["bwd_num_stages"]}
    if kind == "bwd_gated":
        return {"num_warps": cfg.get("gated_bwd_num_warps", 0) or cfg["bwd_num_warps"],
                "num_stages": cfg["bwd_num_stages"]}
    if kind == "out":
        return {"num_warps": cfg["out_num_warps"], "num_stages": cfg["out_num_stages"]}
    if kind == "fused":
        return {"num_warps": cfg["fused_num_warps"], "num_stages": cfg["fused_num_stages"]}
    if kind == "fused_gated":
        return {"num_warps": cfg["fused_num_warps"],
                "num_stages": cfg.get("fused_gated_num_stages", 0) or cfg["fused_num_stages"]}
    return {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def _state_fwd(k, v, b, w, h0, BT, cfg, gate, delta, want_ht, pre=False, fixed=False):
    """pre: k holds the decayed keys and b exp(b_last) per chunk (`_gate_prep`, `_wy(keys=True)`);
    fixed: b holds the fixed per-head log-decay [H]."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = _pow2(K) if delta else min(cfg.get("BLOCK_K", 64), _pow2(K))
    BV = min(cfg["BLOCK_V"], _pow2(V))
    h = torch.empty(B, H, NT, K, V, dtype=k.dtype, device=k.device)
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if want_ht else None
    vnew = torch.empty_like(v) if delta else None
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), B * H)
    _state_fwd_kernel[grid](k, v, b, w, h0, h, ht, vnew, T, NT, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV,
                            GATE=gate, DELTA=delta, HAS_H0=h0 is not None, STORE_HT=want_ht,
                            PREC=_prec(k), PRE=pre, FIXED=fixed, SCALE16=bool(cfg.get("SCAN_SCALE16", 0)),
                            **_launch_opts(cfg))
    return h, ht, vnew


def _fused_fwd(q, k, v, b, h0, scale, BT, cfg, gate, store_h, want_ht, fixed=False, flag=None, w=None):
    """Scan and output in one pass (`_fused_fwd_kernel`): o, h (None unless store_h) and the final state.
    flag: [B*H] int32, each sequence's fold flag or level (`_chunk_cumsum(flags=True)`, `_fused_gate`).
    w (delta rule): the UT transform's w, v then holds its u."""
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BV = min(cfg["FUSED_BLOCK_V"], _pow2(V))
    o = torch.empty_like(v)
    h = torch.empty(B, H, NT, K, V, dtype=k.dtype, device=k.device) if store_h else None
    ht = torch.empty(B, H, K, V, dtype=torch.float32, device=k.device) if want_ht else None
    fold = _fold_mode(cfg, gate, q.dtype) if fixed or flag is not None else 0
    _fused_fwd_kernel[(triton.cdiv(V, BV), B * H)](q, k, v, w, b, flag, h0, h, ht, o, scale, T, NT, H=H, K=K, V=V,
                                                   BT=BT, BK=_pow2(K), BV=BV, GATE=gate, HAS_H0=h0 is not None,
                                                   STORE_H=store_h, STORE_HT=want_ht, PREC=_prec(q), FIXED=fixed,
                                                   SAFE=GLA_SAFE_SPAN, FOLD=fold, DELTA=w is not None,
                                                   PREFETCH=cfg.get("FUSED_PREFETCH", 0),
                                                   SPLIT=bool(cfg.get("FUSED_SPLIT_K", 0)) and _pow2(K) >= 32,
                                                   SCALE16=bool(cfg.get("FUSED_SCALE16", 0)),
                                                   **_launch_opts(cfg, "fused_gated" if gate else "fused"))
    return o, h, ht


def _fold_mode(cfg, gate, dtype):
    """FUSED_FOLD for this input: 0 for fp16 inputs, whose v tile scaled by exp(r - b_j) (up to exp(SAFE / 2))
    would overflow fp16's range (bf16 has fp32's)."""
    return cfg.get("FUSED_FOLD", 1) if gate == 1 and dtype != torch.float16 else 0


def _fused_gate(g, BT, cfg, dtype):
    """The gate as the fused pass takes it: (b, flag), b the fixed [H] decay itself or the cumulative gate, flag
    the per-sequence safe flags when a scalar gate is to be folded (else None)."""
    if _fixed(g):
        return g, None
    fold = _fold_mode(cfg, _gate_kind(g), dtype)
    if fold:
        # the flag's levels: FOLD 3 pivots at the chunk's end, its factors span exp(+-span), so its span must be
        # half FOLD 1's; a sequence beyond that but within FOLD 1's takes FOLD 1's loop
        return _chunk_cumsum(g, BT, flags=True, levels=fold >= 3,
                             top=LAZY_SPAN if fold == 5 else GLA_SAFE_SPAN / 2)
    return _chunk_cumsum(g, BT), None


def _wants_grad(*tensors) -> bool:
    """Will a backward follow (grad mode on and an input that requires a gradient)?"""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _takes_fused(cfg, gate, need_grad):
    """Does this forward run `_fused_fwd_kernel` (FUSED_FWD, no or scalar gate)?"""
    mode = cfg.get("FUSED_FWD", 0)
    if gate == 2 or mode == 0:
        return False
    return not need_grad or mode == 3 or (mode == 2 and gate == 0)


def _gla_intra(q, k, b, flag, BT):
    B, T, H, K = q.shape
    NT = triton.cdiv(T, BT)
    att = torch.empty(B * H, T, BT, dtype=torch.float32, device=q.device)
    grid = (NT, B * H)
    _gla_intra_kernel[grid](q, k, b, flag, att, T, NT, H=H, K=K, BT=BT, BC=SUB_BLOCK, BK=_pow2(K), PREC=_prec(q))
    return att


def _out_fwd(q, k, v, b, h, att, scale, BT, cfg, gate, flag=None, fixed=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = min(cfg["OUT_BLOCK_K"], _pow2(K))
    BV = min(cfg["OUT_BLOCK_V"], _pow2(V))
    o = torch.empty_like(v)
    if cfg.get("GLA_OUT_FUSED", 0) if gate == 2 else cfg.get("OUT_V_LOOP", 0):
        # per-channel gate: b holds the raw gate here (see `_linear_forward`)
        _out_chunk_kernel[(NT, B * H)](q, k, v, b, h, att, flag, o, scale, T, NT, H=H, K=K, V=V, BT=BT,
                                       BK=_pow2(K), BV=BV, GATE=gate, PREC=_prec(q), FIXED=fixed,
                                       **_launch_opts(cfg, "out"))
        return o
    _out_fwd_kernel[(triton.cdiv(V, BV), NT, B * H)](q, k, v, b, h, att, flag, o, scale, T, NT, H=H, K=K, V=V,
                                                     BT=BT, BK=BK, BV=BV, GATE=gate, PREC=_prec(q),
                                                     FIXED=fixed, **_launch_opts(cfg, "out"))
    return o


def _state_bwd(q, k, w, b, do, dvl, dht, scale, BT, cfg, gate, delta, want_dh0, pre=False, fixed=False):
    """pre: q holds q exp(b), k (delta) the decayed keys, b exp(b_last) per chunk; fixed: b holds g [H]."""
    B, T, H, K = q.shape
    V = do.shape[-1]
    NT = triton.cdiv(T, BT)
    BK = _pow2(K) if delta else min(cfg.get("BLOCK_K", 64), _pow2(K))
    BV = min(cfg.get("SCAN_BWD_BLOCK_V", 0) or cfg["BLOCK_V"], _pow2(V))
    gs = torch.empty(B, H, NT, K, V, dtype=q.dtype, device=q.device)
    dh0 = torch.empty(B, H, K, V, dtype=torch.float32, device=q.device) if want_dh0 else None
    dvn = torch.empty_like(do) if delta else None
    if delta and cfg.get("SCAN_BWD_SPLIT_K", 0) and BK >= 32 and not fixed:
        _delta_state_bwd_kernel[(triton.cdiv(V, BV), B * H)](q, k, w, b, do, dvl, dht, dh0, gs, dvn, scale, T, NT,
                                                             H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate,
                                                             HAS_DHT=dht is not None, STORE_DH0=want_dh0,
                                                             PREC=_prec(q), PRE=pre, **_launch_opts(cfg, "scan_bwd"))
        return gs, dh0, dvn
    grid = (triton.cdiv(K, BK), triton.cdiv(V, BV), B * H)
    _state_bwd_kernel[grid](q, k, w, b, do, dvl, dht, dh0, gs, dvn, scale, T, NT, H=H, K=K, V=V,
                            BT=BT, BK=BK, BV=BV, GATE=gate, DELTA=delta, HAS_DHT=dht is not None,
                            STORE_DH0=want_dh0, PREC=_prec(q), PRE=pre, FIXED=fixed,
                            SCALE16=bool(cfg.get("SCAN_SCALE16", 0)), **_launch_opts(cfg, "scan_bwd"))
    return gs, dh0, dvn


# --------------------------------------------------------------------------------------------
# linear attention
# --------------------------------------------------------------------------------------------

def _linear_forward(q, k, v, g, h0, scale, BT, cfg, want_ht, need_grad=True):
    """o, h (the per-chunk states the backward reads; None when need_grad is False and the fused pass ran)
    and the final state."""
    gate = _gate_kind(g)
    if _takes_fused(cfg, gate, need_grad):
        b, flag = _fused_gate(g, BT, cfg, q.dtype)
        return _fused_fwd(q, k, v, b, h0, scale, BT, cfg, gate, need_grad, want_ht, fixed=_fixed(g), flag=flag)
    if _fixed(g):
        h, ht, _ = _state_fwd(k, v, g, None, h0, BT, cfg, gate, False, want_ht, fixed=True)
        return _out_fwd(q, k, v, g, h, None, scale, BT, cfg, gate, fixed=True), h, ht
    fused_out = gate == 2 and bool(cfg.get("GLA_OUT_FUSED", 0))
    if _use_prep(cfg, gate, backward=False):
        # the fused output forms b itself: only unsafe chunks' b is written (for `_gla_intra_kernel`)
        b, flag, kd, d = _gate_prep(g, k, BT, keys=True, store_b=1 if fused_out else 2)
        h, ht, _ = _state_fwd(kd, v, d, None, h0, BT, cfg, gate, False, want_ht, pre=True)
        del kd
    else:
        b, flag = _chunk_cumsum(g, BT, flags=True) if gate == 2 else (_chunk_cumsum(g, BT), None)
        h, ht, _ = _state_fwd(k, v, b, None, h0, BT, cfg, gate, False, want_ht)
    att = _gla_intra(q, k, b, flag, BT) if gate == 2 else None
    o = _out_fwd(q, k, v, g if fused_out else b, h, att, scale, BT, cfg, gate, flag)
    return o, h, ht


def _linear_backward(q, k, v, g, h, do, dht, scale, BT, cfg, want_dh0):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    gate = _gate_kind(g)
    fixed = _fixed(g)
    # (a grid's second axis holds at most 65,535 programs: past that many chunks, the default order)
    heads_first = bool(cfg.get("HEADS_FIRST", 0)) and NT <= 65535
    if fixed:
        b, flag = g, None
        gs, dh0, _ = _state_bwd(q, k, None, b, do, None, dht, scale, BT, cfg, gate, False, want_dh0, fixed=True)
    elif _use_prep(cfg, gate, backward=True):
        b, flag, qd, d = _gate_prep(g, q, BT, keys=False, store_b=2, heads_first=heads_first,
                                    warps=cfg.get("prep_bwd_num_warps", 0))
        gs, dh0, _ = _state_bwd(qd, k, None, d, do, None, dht, scale, BT, cfg, gate, False, want_dh0, pre=True)
        del qd, d
    else:
        b, flag = _chunk_cumsum(g, BT, flags=True) if gate == 2 else (_chunk_cumsum(g, BT), None)
        gs, dh0, _ = _state_bwd(q, k, None, b, do, None, dht, scale, BT, cfg, gate, False, want_dh0)
    att = _gla_intra(q, k, b, flag, BT) if gate == 2 else None
    BK = _pow2(K)
    BV = min(_bwd_block_v(cfg, gate), _pow2(V))
    dv = torch.empty_like(v)
    db = None
    prefix = gate == 1 and not fixed and bool(cfg.get("DG_PREFIX", 0))
    dg = torch.empty(g.shape, dtype=torch.float32 if prefix else g.dtype, device=g.device) \
        if gate and not fixed else None
    da = e = None
    if prefix:
        e = torch.empty(B * H, NT, 2, dtype=torch.float32, device=q.device)
    if gate == 2:
        dq_i = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        dk_i = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        da = torch.empty(B * H, T, BT, dtype=torch.float32, device=q.device)
        e = torch.empty(B * H, NT, K, dtype=torch.float32, device=q.device)
    else:
        dq_i, dk_i = torch.empty_like(q), torch.empty_like(k)
    opts = _launch_opts(cfg, "bwd_gated" if gate else "bwd")
    if gate == 2:  # the per-channel variant holds more tiles; 3 stages there were never measured
        opts["num_stages"] = min(opts["num_stages"], 2)
    dq = dk = None
    if gate == 2:
        dq, dk = torch.empty_like(q), torch.empty_like(k)
    weak_mode = cfg.get("DG_WEAK", 0) if gate == 1 and not fixed else 0
    # DG_WEAK 2 / GLA_BWD_SPLIT: two launches, each kernel compiled for one kind of chunk
    if weak_mode == 2:
        parts = [(2, 0), (3, 0)]
    elif gate == 2 and cfg.get("GLA_BWD_SPLIT", 0):
        parts = [(0, 1), (0, 2)]
    else:
        parts = [(weak_mode, 0)]
    for weak_part, gla_part in parts:
        grid = _chunk_grid(NT, B * H, heads_first)
        _linear_bwd_kernel[grid](q, k, v, b, h, gs, do, att, flag, dq_i, dk_i, dv, dg, da, e, dq, dk, scale,
                                 T, NT, H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate, PREC=_prec(q),
                                 FIXED=fixed, ONE_SUM=bool(cfg.get("DG_ONE_SUM", 0)),
                                 RELOAD=bool(cfg.get("GLA_BWD_RELOAD", 0)), DG_WEAK=weak_part,
                                 GLA_PART=gla_part, KDEC=gate == 1 and bool(cfg.get("BWD_KDEC", 0)),
                                 HEADS_FIRST=heads_first, DG_PREFIX=prefix, **opts)
    if gate != 2:
        if prefix:
            dg = _add_state_term(dg, e, h, gs, b, BT).to(g.dtype)
        return dq_i, dk_i, dv, dg, dh0
    grid = (NT, B * H)
    _gla_intra_bwd_kernel[grid](q, k, b, flag, da, dq_i, dk_i, dq, dk, T, NT, H, K=K, BT=BT, BC=SUB_BLOCK, BK=BK,
                                PREC=_prec(q))
    # dq_i / dk_i now hold the X / Y terms of the gate gradient
    _gla_gate_grad_kernel[(NT, B * H)](dq_i, dk_i, e, dg, T, NT, H, K=K, BT=BT, BK=BK, PREC=_prec(q))
    return dq, dk, dv, dg, dh0


def _add_state_term(dg, xy, h, gs, b, BT):
    """dg [B, T, H] (fp32, without its state terms) plus, on every step of chunk n, F_n = exp(b_last(n)) <h_n, G_n>
    (DG_PREFIX). With S_n the state entering chunk n and a_n its decay exp(b_last(n)): G_{n-1} = a_n G_n + P_n and
    S_n = a_{n-1} S_{n-1} + U_{n-1} give <S_n, G_{n-1}> two ways, a_n <S_n, G_n> + <S_n, P_n> and
    a_{n-1} <S_{n-1}, G_{n-1}> + <U_{n-1}, G_{n-1}>, where <S_n, P_n> = X_n = sum_i q_i.dq_inter_i and
    <U_{n-1}, G_{n-1}> = Y_{n-1} = sum_j k_j.dk_inter_j, the per-chunk sums the kernel wrote (xy [B*H, NT, 2]). So
    F_n = F_{n-1} + Y_{n-1} - X_n from F_0 = a_0 <h_0, G_0>, summed in float64 (a few numbers per chunk)."""
    B, T, H = dg.shape
    NT = xy.shape[1]
    f0 = torch.exp(b[:, :, min(BT, T) - 1].double()) * (h[:, :, 0].double() * gs[:, :, 0].double()).sum((-2, -1))
    xy = xy.view(B, H, NT, 2).double()
    steps = xy[..., :-1, 1] - xy[..., 1:, 0]  # Y_{n-1} - X_n for n >= 1
    f = f0[..., None] + torch.nn.functional.pad(torch.cumsum(steps, dim=-1), (1, 0))
    rows = f.repeat_interleave(BT, dim=-1)[..., :T]
    return dg + rows.transpose(1, 2).float()


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, g, h0, scale, BT, cfg, want_ht):
        o, h, ht = _linear_forward(q, k, v, g, h0, scale, BT, cfg, want_ht)
        ctx.save_for_backward(q, k, v, g, h)
        ctx.meta = (scale, BT, cfg, h0 is not None, want_ht)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, g, h = ctx.saved_tensors
        scale, BT, cfg, has_h0, want_ht = ctx.meta
        dht = None if dht is None or not want_ht else dht.contiguous().float()
        dq, dk, dv, dg, dh0 = _linear_backward(q, k, v, g, h, do.contiguous(), dht, scale, BT, cfg, has_h0)
        return dq, dk, dv, dg, dh0, None, None, None, None


_STAGE_KEYS = ("num_stages", "out_num_stages", "bwd_num_stages", "scan_bwd_num_stages", "fused_num_stages",
               "fused_gated_num_stages")


def fit_stages(cfg: dict, dtype: torch.dtype, chunk_size: int) -> dict:
    """cfg with its pipeline stages capped so that every kernel's shared memory fits sm_90's 227 KB.
    Stages multiply the buffered tiles, and tiles grow with the element size and the chunk:
    - fp32 inputs, chunk <= 64: at most 2 stages (with 3, the backward kernels asked for 279-295 KB on
      the H200 and failed to launch);
    - chunk 128, half inputs: the per-chunk backward kernels at 1 stage, the rest at 2 (on the H200 the
      defaults' 3 stages asked for 311 KB (linear backward) and 332 KB (delta-rule backward scan); compiled
      for sm_90 here, the linear backward needs 246 KB at 2 stages and 197 KB at 1, every other kernel
      <= 225 KB at 2);
    - chunk 128, fp32 inputs: every family at 1 stage (the interpreter only: on a GPU `_prepare` refuses
      them, the linear backward needs 262-393 KB even at 1 stage and V tiles of 32)."""
    out = dict(cfg)
    out["scan_bwd_num_stages"] = out.get("scan_bwd_num_stages", 0) or out["num_stages"]
    if chunk_size >= 128:
        caps = dict.fromkeys(_STAGE_KEYS, 1 if dtype == torch.float32 else 2)
        caps["bwd_num_stages"] = 1
    elif dtype == torch.float32:
        caps = dict.fromkeys(_STAGE_KEYS, 2)
    else:
        return out
    for key, most in caps.items():
        if key in out:  # (the delta rule has no fused pass)
            out[key] = min(out[key], most)
    return out


def _prepare(q, k, v, g, initial_state, scale, chunk_size, config):
    if q.is_cuda and q.dtype == torch.float32 and chunk_size >= 128:
        raise ValueError("chunk_size=128 with float32 inputs needs more shared memory than the GPU has "
                         "(262-393 KB per block for the backward); use chunk_size <= 64 or bf16/fp16 inputs")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    cfg = fit_stages(config, q.dtype, chunk_size)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    g = None if g is None else g.contiguous()
    h0 = None if initial_state is None else initial_state.float().contiguous()
    return q, k, v, g, h0, scale, cfg


def linear_attention_triton(q, k, v, g, *, scale, chunk_size, initial_state, output_final_state, config):
    """Chunkwise linear attention; g None, [H] (fixed decay, no gradient: ops.py passes [H] here only
    when g needs none and expands it otherwise), [B, T, H] or [B, T, H, K]."""
    if q.dtype == torch.float64:
        raise ValueError("the triton backend takes float32, bfloat16 or float16, not float64")
    q, k, v, g, h0, scale, cfg = _prepare(q, k, v, g, initial_state, scale, chunk_size, config)
    if not _wants_grad(q, k, v, g, h0):  # inference: nothing is saved, and the fused pass (FUSED_FWD >= 1) writes no states
        o, _h, ht = _linear_forward(q, k, v, g, h0, scale, chunk_size, cfg, output_final_state, need_grad=False)
        return o, (ht if output_final_state else None)
    o, ht = _LinearAttention.apply(q, k, v, g, h0, scale, chunk_size, cfg, output_final_state)
    return o, (ht if output_final_state else None)


# --------------------------------------------------------------------------------------------
# delta rule
# --------------------------------------------------------------------------------------------

def _wy(k, v, beta, b, BT, store_tm, keys=False, tm_dtype=torch.float32, tm_in=None):
    """w, u (and Tm in tm_dtype with store_tm) of the UT transform; keys (gated): also the decayed keys and
    exp(b_last) per chunk for the scans' PRE path, returned as (w, u, tm, kd, d). tm_in: Tm as a forward with
    SAVE_TM stored it; w and u are formed from it (no diagonal inverses, no doubling) and it is returned as tm."""
    B, T, H, K = k.shape
    V = v.shape[-1]
    w = torch.empty_like(k)
    u = torch.empty_like(v)
    gate = 0 if b is None else 1
    keys = keys and gate == 1
    kd = torch.empty_like(k) if keys else None
    dl = torch.empty(B * H, triton.cdiv(T, BT), dtype=torch.float32, device=k.device) if keys else None
    if tm_in is None:
        dinv = torch.empty(B * H, T, SUB_BLOCK, dtype=torch.float32, device=k.device)
        _ut_diag_kernel[(triton.cdiv(T, BT) * (BT // SUB_BLOCK), B * H)](k, beta, b, dinv, T, H=H, K=K, BT=BT,
                                                                        BC=SUB_BLOCK, BK=_pow2(K), GATE=gate,
                                                                        PREC=_prec(k), num_warps=1)
        tm = torch.empty(B * H, T, BT, dtype=tm_dtype, device=k.device) if store_tm else None
    else:
        dinv, tm, store_tm = None, tm_in, False
    _wy_fwd_kernel[(triton.cdiv(T, BT), B * H)](k, v, beta, b, dinv, w, u, tm, kd, dl, T, H=H, K=K, V=V, BT=BT,
                                                BK=_pow2(K), BV=min(64, _pow2(V)), BC=SUB_BLOCK,
                                                LOG2NB=(BT // SUB_BLOCK).bit_length() - 1, GATE=gate,
                                                STORE_TM=store_tm, PREC=_prec(k), STORE_KD=keys,
                                                LOAD_TM=tm_in is not None, num_warps=4)
    return (w, u, tm, kd, dl) if keys else (w, u, tm)


def _saves_tm(cfg, need_grad):
    """Does the forward keep Tm for the backward (SAVE_TM; not for WY_BWD_SPLIT, which takes it in bf16)?"""
    return need_grad and bool(cfg.get("SAVE_TM", 0)) and not cfg.get("WY_BWD_SPLIT", 0)


def _delta_forward(q, k, v, beta, g, h0, scale, BT, cfg, want_ht, need_grad=True):
    """o, h (None when no backward follows and the fused pass ran), the final state, and Tm (SAVE_TM, else None)."""
    gate = _gate_kind(g)
    save_tm = _saves_tm(cfg, need_grad)
    if _takes_fused(cfg, gate, need_grad):
        b, flag = _fused_gate(g, BT, cfg, q.dtype)
        w, u, tm = _wy(k, v, beta, b, BT, save_tm)
        return (*_fused_fwd(q, k, u, b, h0, scale, BT, cfg, gate, need_grad, want_ht, flag=flag, w=w), tm)
    b = _chunk_cumsum(g, BT)
    if _use_prep(cfg, gate, backward=False):
        w, u, tm, kd, d = _wy(k, v, beta, b, BT, save_tm, keys=True)
        h, ht, vnew = _state_fwd(kd, u, d, w, h0, BT, cfg, gate, True, want_ht, pre=True)
        del kd
    else:
        w, u, tm = _wy(k, v, beta, b, BT, save_tm)
        h, ht, vnew = _state_fwd(k, u, b, w, h0, BT, cfg, gate, True, want_ht)
    o = _out_fwd(q, k, vnew, b, h, None, scale, BT, cfg, gate)
    return o, h, ht, tm


def _delta_backward(q, k, v, beta, g, h, do, dht, scale, BT, cfg, want_dh0, tm=None):
    B, T, H, K = q.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, BT)
    gate = _gate_kind(g)
    b = _chunk_cumsum(g, BT)
    pre = _use_prep(cfg, gate, backward=True)
    split = cfg.get("WY_BWD_SPLIT", 0)
    # the split kernels take Tm only as a matmul operand, in the inputs' dtype (as the forward's w and u took it)
    tm_dtype = k.dtype if split else torch.float32
    if pre:
        w, u, tm, kd, d = _wy(k, v, beta, b, BT, True, keys=True, tm_dtype=tm_dtype, tm_in=tm)
    else:
        w, u, tm = _wy(k, v, beta, b, BT, True, tm_dtype=tm_dtype, tm_in=tm)
    BK = _pow2(K)
    BV = min(_bwd_block_v(cfg, gate), _pow2(V))
    bwd_opts = _launch_opts(cfg, "bwd_gated" if gate else "bwd")
    dvl = torch.empty_like(do)
    qd = torch.empty_like(q) if pre else None
    _dv_local_kernel[(NT, B * H)](q, k, b, do, dvl, qd, scale, T, H=H, K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate,
                                  PREC=_prec(q), STORE_QD=pre, **bwd_opts)
    if pre:
        gs, dh0, dvn = _state_bwd(qd, kd, w, d, do, dvl, dht, scale, BT, cfg, gate, True, want_dh0, pre=True)
        del qd, kd, d
    else:
        gs, dh0, dvn = _state_bwd(q, k, w, b, do, dvl, dht, scale, BT, cfg, gate, True, want_dh0)
    del dvl  # folded into dvn; free it before the gradient buffers are allocated (peak memory)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # the first part of dk, handed from one kernel to the next: fp32 only for fp32 inputs (half inputs get
    # half gradients; an fp32 round trip of [B, T, H, K] cost as much traffic as reading q and k twice)
    dk_part = torch.empty(k.shape, dtype=torch.float32 if q.dtype == torch.float32 else q.dtype, device=q.device)
    dbeta = torch.empty(B, T, H, dtype=torch.float32, device=q.device)
    dg = db = y = e = None
    if gate:
        dg, y = (torch.empty(B, T, H, dtype=torch.float32, device=q.device) for _ in range(2))
        db = torch.empty(B, H, T, dtype=torch.float32, device=q.device)  # scalar-gate rows, as b ([B*H, T])
        e = torch.empty(B * H, NT, dtype=torch.float32, device=q.device)
    meta = dict(K=K, V=V, BT=BT, BK=BK, BV=BV, GATE=gate, PREC=_prec(q), **bwd_opts)
    _delta_bwd_dqk_kernel[(NT, B * H)](q, k, b, w, u, h, gs, do, dq, dk_part, db, y, e, scale, T, NT, H, **meta)
    if split:
        dw = w  # w is not read after the dqk kernel: its buffer takes dw
        _delta_bwd_dw_kernel[(NT, B * H)](h, dvn, dw, T, NT, H, K=K, V=V, BT=BT, BK=BK, BV=BV, PREC=_prec(q),
                                          **bwd_opts)
        # K tiles of 16: the K loop chains three matmuls a tile; at 32 the kernel took up to 139 registers at 8 warps
        # on sm_90 (one block per SM with V tiles of 32), at 16 99-128 (two blocks, V tiles of 16 or 32)
        meta["BK"] = 16
        _delta_bwd_wy_split_kernel[(NT, B * H)](k, v, beta, b, tm, dvn, dw, dk_part, db, y, e, dk, dv, dbeta, dg,
                                                T, NT, H, **meta)
    else:
        _delta_bwd_wy_kernel[(NT, B * H)](k, v, beta, b, tm, h, dvn, dk_part, db, y, e, dk, dv, dbeta, dg,
                                          T, NT, H, **meta)
    return dq, dk, dv, dbeta.to(beta.dtype), (None if dg is None else dg.to(g.dtype)), dh0


class _DeltaRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, h0, scale, BT, cfg, want_ht):
        o, h, ht, tm = _delta_forward(q, k, v, beta, g, h0, scale, BT, cfg, want_ht)
        ctx.save_for_backward(q, k, v, beta, g, h, tm)
        ctx.meta = (scale, BT, cfg, h0 is not None, want_ht)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, beta, g, h, tm = ctx.saved_tensors
        scale, BT, cfg, has_h0, want_ht = ctx.meta
        dht = None if dht is None or not want_ht else dht.contiguous().float()
        dq, dk, dv, dbeta, dg, dh0 = _delta_backward(q, k, v, beta, g, h, do.contiguous(), dht, scale, BT, cfg,
                                                     has_h0, tm=tm)
        return dq, dk, dv, dbeta, dg, dh0, None, None, None, None


def delta_rule_triton(q, k, v, beta, g, *, scale, chunk_size, initial_state, output_final_state, config):
    """Chunkwise (gated) delta rule; g None or [B, T, H] (ops.py normalises [H])."""
    if q.dtype == torch.float64:
        raise ValueError("the triton backend takes float32, bfloat16 or float16, not float64")
    if g is not None and g.dim() != 3:
        raise ValueError(f"delta_rule g must be [B, T, H], got {tuple(g.shape)}")
    q, k, v, g, h0, scale, cfg = _prepare(q, k, v, g, initial_state, scale, chunk_size, config)
    beta = beta.contiguous()
    if not _wants_grad(q, k, v, beta, g, h0):
        o, _h, ht, _tm = _delta_forward(q, k, v, beta, g, h0, scale, chunk_size, cfg, output_final_state,
                                       need_grad=False)
        return o, (ht if output_final_state else None)
    o, ht = _DeltaRule.apply(q, k, v, beta, g, h0, scale, chunk_size, cfg, output_final_state)
    return o, (ht if output_final_state else None)
