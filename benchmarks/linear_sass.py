"""Compile our Triton linear-attention / delta-rule kernels for sm_90 without a GPU and report what ptxas
made of them: registers, spills, shared memory, and per SASS loop its length, spills, tensor-core ops and
global loads. Also a compile check of every kernel variant the gate paths add (a kernel that does not
compile for sm_90 fails here, not on the GPU).

    python benchmarks/linear_sass.py [--only state_fwd,state_bwd]
    python benchmarks/linear_sass.py --launch-grid [--only delta_bwd_wy]   # blocks per SM per launch config

Shapes: bf16, K = V = 128, chunk 64, the default tiles of triton_linear. Uses benchmarks/attention_sass.py's
ptxas / nvdisasm helpers (the Triton installed here; the GPU machine may run another version).
What it answers: how many instructions and global loads the scans' sequential loops carry per gate path.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from attention_sass import loops_of, ptxas_report, sass_instructions  # noqa: E402
from attnsearch.kernels import triton_linear as tlin  # noqa: E402

# pointer arguments that hold fp32 / int32 data (the rest are bf16 inputs, outputs or states)
FP32 = {"b_ptr", "h0_ptr", "ht_ptr", "dht_ptr", "dh0_ptr", "a_ptr", "d_ptr", "dl_ptr", "da_ptr", "e_ptr",
        "dqi_ptr", "dki_ptr", "x_ptr_f", "db_ptr", "y_ptr", "dbeta_ptr", "tm_ptr"}
INT32 = {"flag_ptr"}


# constexpr flags with a default in the kernels' signatures (not every job names them)
DEFAULT_FLAGS = {"PRE": False, "FIXED": False, "PREFETCH": 0, "SPLIT": False, "LOAD_TM": False, "STORE_KD": False,
                 "DELTA": False, "ONE_SUM": False, "RELOAD": False, "SCALE16": False, "DG_WEAK": 0,
                 "GLA_PART": 0, "KDEC": False, "HEADS_FIRST": False, "DG_PREFIX": False}


def compile_sm90(fn, constexprs, num_warps, num_stages, fp32=()):
    constexprs = {**{k: v for k, v in DEFAULT_FLAGS.items() if k in fn.arg_names}, **constexprs}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i32" if name in INT32 else ("*fp32" if name in FP32 or name in fp32 else "*bf16")
        elif name == "scale":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if sig[name].startswith("*")}
    return triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 64),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def jobs():
    """(label, kernel, constexprs, warps, stages, extra fp32 pointer names)."""
    lin = tlin.default_config("linear_attention")
    dl = tlin.default_config("delta_rule")
    K = V = 128
    BT = 64
    scan = dict(K=K, V=V, BT=BT, PREC="tf32")
    out = []
    for gate in (0, 1, 2):
        for pre in ((False, True) if gate else (False,)):
            c = dict(scan, BK=lin["BLOCK_K"], BV=lin["BLOCK_V"], GATE=gate, DELTA=False, HAS_H0=False,
                     STORE_HT=False, PRE=pre)
            out.append((f"state_fwd gate={gate} pre={pre}", tlin._state_fwd_kernel, c, lin["num_warps"],
                        lin["num_stages"], ()))
            c = dict(scan, BK=lin["BLOCK_K"], BV=lin["BLOCK_V"], GATE=gate, DELTA=False, HAS_DHT=False,
                     STORE_DH0=False, PRE=pre)
            out.append((f"state_bwd gate={gate} pre={pre}", tlin._state_bwd_kernel, c, lin["num_warps"],
                        lin["num_stages"], ()))
    for fixed in (False, True):  # the scalar gates' in-loop row factors by packed 16-bit multiplies
        for kern, name, extra in ((tlin._state_fwd_kernel, "state_fwd", dict(HAS_H0=False, STORE_HT=False)),
                                  (tlin._state_bwd_kernel, "state_bwd", dict(HAS_DHT=False, STORE_DH0=False))):
            c = dict(scan, BK=lin["BLOCK_K"], BV=lin["BLOCK_V"], GATE=1, DELTA=False, PRE=False, FIXED=fixed,
                     SCALE16=True, **extra)
            out.append((f"{name} scale16 gate=1 fixed={fixed}", kern, c, lin["num_warps"], lin["num_stages"], ()))
    for gate in (0, 1):
        for pre in ((False, True) if gate else (False,)):
            c = dict(scan, BK=K, BV=dl["BLOCK_V"], GATE=gate, DELTA=True, HAS_H0=False, STORE_HT=False, PRE=pre)
            out.append((f"delta state_fwd gate={gate} pre={pre}", tlin._state_fwd_kernel, c, dl["num_warps"],
                        dl["num_stages"], ()))
            c = dict(scan, BK=K, BV=dl["BLOCK_V"], GATE=gate, DELTA=True, HAS_DHT=False, STORE_DH0=False, PRE=pre)
            out.append((f"delta state_bwd gate={gate} pre={pre}", tlin._state_bwd_kernel, c, dl["num_warps"],
                        dl["num_stages"], ("dvl_ptr",)))
            # SCAN_BWD_SPLIT_K (the default): the state gradient as two halves of K
            c = dict(scan, BK=K, BV=dl["BLOCK_V"], GATE=gate, HAS_DHT=False, STORE_DH0=False, PRE=pre)
            out.append((f"delta_state_bwd split_k gate={gate} pre={pre}", tlin._delta_state_bwd_kernel, c,
                        dl["num_warps"], dl["num_stages"], ()))
    for vec in (False, True):
        for keys in (False, True):
            c = dict(K=K, BT=BT, BK=K, VEC=vec, KEYS=keys, STORE_B=1 if vec else 2, SAFE=tlin.GLA_SAFE_SPAN)
            out.append((f"gate_prep vec={vec} keys={keys}", tlin._gate_prep_kernel, c, 8 if vec else 4, 1, ()))
        # HEADS_FIRST (the backward's pass: queries), at the warps prep_bwd_num_warps offers
        for warps in ((4, 8) if vec else (2, 4, 8)):
            c = dict(K=K, BT=BT, BK=K, VEC=vec, KEYS=False, STORE_B=2, SAFE=tlin.GLA_SAFE_SPAN, HEADS_FIRST=True)
            out.append((f"gate_prep heads_first vec={vec} w{warps}", tlin._gate_prep_kernel, c, warps, 1, ()))
    c = dict(K=K, V=V, BT=BT, BK=lin["OUT_BLOCK_K"], BV=lin["OUT_BLOCK_V"], GATE=2, PREC="tf32")
    out.append(("out_fwd gate=2", tlin._out_fwd_kernel, c, lin["out_num_warps"], lin["out_num_stages"], ()))
    for gate in (0, 1, 2):
        for bv, warps in ((64, 4), (64, 8), (128, 8)):
            c = dict(K=K, V=V, BT=BT, BK=K, BV=bv, GATE=gate, PREC="tf32")
            out.append((f"out_chunk gate={gate} BV={bv} warps={warps}", tlin._out_chunk_kernel, c, warps, 2,
                        ("g_ptr",) if gate == 1 else ()))
    for gate in (0, 1):
        c = dict(K=K, V=V, BT=BT, BK=lin["OUT_BLOCK_K"], BV=lin["OUT_BLOCK_V"], GATE=gate, PREC="tf32")
        out.append((f"out_fwd gate={gate}", tlin._out_fwd_kernel, c, lin["out_num_warps"], lin["out_num_stages"], ()))
    for gate in (0, 1, 2):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=lin["BWD_BLOCK_V"], GATE=gate, PREC="tf32")
        # gate 2 keeps its inter-chunk dq/dk (dq_ptr, dk_ptr) in fp32; its stages are capped at 2
        out.append((f"linear_bwd gate={gate}", tlin._linear_bwd_kernel, c, lin["bwd_num_warps"],
                    min(lin["bwd_num_stages"], 2) if gate == 2 else lin["bwd_num_stages"],
                    ("dq_ptr", "dk_ptr", "dg_ptr") if gate == 2 else ("dg_ptr",)))
    for name, flags in (("reload", dict(RELOAD=True)), ("split safe chunks", dict(GLA_PART=1)),
                        ("split unsafe chunks", dict(GLA_PART=2)),
                        ("split safe chunks reload", dict(GLA_PART=1, RELOAD=True))):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=lin["BWD_BLOCK_V"], GATE=2, PREC="tf32", **flags)
        out.append((f"linear_bwd gate=2 {name}", tlin._linear_bwd_kernel, c, lin["bwd_num_warps"],
                    min(lin["bwd_num_stages"], 2), ("dq_ptr", "dk_ptr", "dg_ptr")))
    # Mamba-2's gate gradient: one masked row sum; fla's form on weak chunks (both forms compiled, a branch)
    for name, flags in (("one_sum", dict(ONE_SUM=True)), ("dg_weak", dict(DG_WEAK=1)),
                        ("dg_weak one_sum", dict(DG_WEAK=1, ONE_SUM=True)),
                        ("dg_weak one_sum kdec", dict(DG_WEAK=1, ONE_SUM=True, KDEC=True)),
                        ("dg_weak one_sum prefix", dict(DG_WEAK=1, ONE_SUM=True, DG_PREFIX=True)),
                        ("fixed", dict(FIXED=True)), ("fixed kdec", dict(FIXED=True, KDEC=True)),
                        ("dg_weak=2 weak chunks", dict(DG_WEAK=2)), ("dg_weak=2 other chunks", dict(DG_WEAK=3))):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=lin["BWD_BLOCK_V"], GATE=1, PREC="tf32", **flags)
        out.append((f"linear_bwd gate=1 {name}", tlin._linear_bwd_kernel, c, lin["bwd_num_warps"],
                     lin["bwd_num_stages"], ("dg_ptr",)))
    # HEADS_FIRST on every gate kind (and GLA's split launches)
    for gate, flags in ((0, {}), (1, dict(FIXED=True)), (1, dict(DG_WEAK=1, ONE_SUM=True)), (2, dict(GLA_PART=1)),
                        (2, dict(GLA_PART=2))):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=lin["BWD_BLOCK_V"], GATE=gate, PREC="tf32", HEADS_FIRST=True,
                 RELOAD=gate == 2, **flags)
        label = " ".join(f"{k}={v}" for k, v in sorted(flags.items()))
        out.append((f"linear_bwd heads_first gate={gate} {label}".rstrip(), tlin._linear_bwd_kernel,
                    c, lin["bwd_num_warps"], min(lin["bwd_num_stages"], 2) if gate == 2 else lin["bwd_num_stages"],
                    ("dq_ptr", "dk_ptr", "dg_ptr") if gate == 2 else ("dg_ptr",)))
    c = dict(K=K, BT=BT, BK=K, PREC="tf32")
    out.append(("gla_gate_grad", tlin._gla_gate_grad_kernel, c, 4, 1, ("x_ptr",)))
    for gate in (0, 1):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=dl["BWD_BLOCK_V"], GATE=gate, PREC="tf32")
        warps = tlin._launch_opts(dl, "bwd_gated" if gate else "bwd")["num_warps"]
        out.append((f"delta_bwd_dqk gate={gate}", tlin._delta_bwd_dqk_kernel, c, warps, dl["bwd_num_stages"], ()))
        out.append((f"delta_bwd_wy gate={gate}", tlin._delta_bwd_wy_kernel, c, warps, dl["bwd_num_stages"], ()))
        # WY_BWD_SPLIT 1: K in tiles of 16, as `_delta_backward` launches it
        out.append((f"delta_bwd_wy_split gate={gate}", tlin._delta_bwd_wy_split_kernel, dict(c, BK=16),
                    dl["bwd_num_warps"], dl["bwd_num_stages"], ("dg_ptr",)))
    c = dict(K=K, V=V, BT=BT, BK=K, BV=dl["BWD_BLOCK_V"], PREC="tf32")
    out.append(("delta_bwd_wy_split dw", tlin._delta_bwd_dw_kernel, c, dl["bwd_num_warps"], dl["bwd_num_stages"],
                ()))
    fold = lin["FUSED_FOLD"]
    for gate, fixed, fold, split in ((0, False, 0, False), (1, True, fold, False), (1, True, 3, False),
                                     (1, True, 4, False), (1, False, fold, False), (1, False, 3, False),
                                     (1, False, 4, False), (1, False, 5, False), (1, False, 0, False),
                                     (0, False, 0, True),
                                     (1, False, fold, True)):
        for store_h in (False, True):
            c = dict(K=K, V=V, BT=BT, BK=K, BV=lin["FUSED_BLOCK_V"], GATE=gate, HAS_H0=False, STORE_H=store_h,
                     STORE_HT=False, PREC="tf32", FIXED=fixed, SAFE=tlin.GLA_SAFE_SPAN, FOLD=fold,
                     PREFETCH=lin["FUSED_PREFETCH"], SPLIT=split)
            launch = tlin._launch_opts(lin, "fused_gated" if gate else "fused")
            out.append((f"fused_fwd gate={gate} fixed={fixed} fold={fold} split_k={split} store_h={store_h}",
                        tlin._fused_fwd_kernel, c, launch["num_warps"], launch["num_stages"], ()))
            if gate and not split:  # v's row factors by packed 16-bit multiplies
                out.append((f"fused_fwd scale16 gate={gate} fixed={fixed} fold={fold} store_h={store_h}",
                            tlin._fused_fwd_kernel, dict(c, SCALE16=True), launch["num_warps"],
                            launch["num_stages"], ()))
    for gate, fold in ((0, 0), (1, 1), (1, 3), (1, 4), (1, 5)):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=dl["FUSED_BLOCK_V"], GATE=gate, HAS_H0=False, STORE_H=False,
                 STORE_HT=False, PREC="tf32", FIXED=False, SAFE=tlin.GLA_SAFE_SPAN, FOLD=fold, DELTA=True,
                 PREFETCH=dl["FUSED_PREFETCH"])
        launch = tlin._launch_opts(dl, "fused_gated" if gate else "fused")
        out.append((f"fused_fwd delta gate={gate} fold={fold}", tlin._fused_fwd_kernel, c, launch["num_warps"],
                    launch["num_stages"], ()))
    c = dict(K=K, BT=BT, BC=tlin.SUB_BLOCK, BK=K, PREC="tf32")
    out.append(("gla_intra", tlin._gla_intra_kernel, c, 4, 1, ()))
    out.append(("gla_intra_bwd", tlin._gla_intra_bwd_kernel, c, 4, 1, ()))
    for store in (False, True):
        c = dict(K=K, V=V, BT=BT, BK=K, BV=64, BC=tlin.SUB_BLOCK, LOG2NB=2, GATE=1, STORE_TM=True, PREC="tf32",
                 STORE_KD=store)
        out.append((f"wy_fwd store_kd={store}", tlin._wy_fwd_kernel, c, 4, 1, ()))
        # SAVE_TM: the backward's UT transform reads the forward's Tm (fp32)
        c = dict(c, STORE_TM=False, LOAD_TM=True)
        out.append((f"wy_fwd load_tm store_kd={store}", tlin._wy_fwd_kernel, c, 4, 1, ()))
        c = dict(K=K, V=V, BT=BT, BK=K, BV=dl["BWD_BLOCK_V"], GATE=1, PREC="tf32", STORE_QD=store)
        out.append((f"dv_local store_qd={store}", tlin._dv_local_kernel, c, dl["bwd_num_warps"],
                    dl["bwd_num_stages"], ()))
    return out


SM90_REGISTERS = 65536
SM90_SHARED = 228 * 1024  # per SM; a block may take 227 KB, and 1 KB more is reserved per block


def blocks_per_sm(registers: int, warps: int, shared_bytes: int) -> int:
    """Blocks of one kernel resident on an sm_90 SM at once: registers are allocated per warp in units of 256,
    shared memory per block with 1 KB reserved; at most 2048 threads and 32 blocks."""
    per_warp = -(-registers * 32 // 256) * 256
    by_registers = SM90_REGISTERS // (per_warp * warps)
    by_shared = SM90_SHARED // (shared_bytes + 1024)
    return max(0, min(by_registers, by_shared, 2048 // (32 * warps), 32))


def launch_grid_jobs(warps=(4, 8), stages=(1, 2, 3), tiles=(16, 32, 64)):
    """The per-chunk backward kernels of the delta rule and the scalar-gated linear backward over launch
    configurations (warps x stages x V tile): which reach two or more blocks per SM without spilling. Each of
    these kernels has one program per chunk and took 1.1-1.7 ms at T=32768 on the H200 with one 8-warp block
    per SM, far above its memory floor (session 6)."""
    K = V = 128
    out = []
    for w in warps:
        for st in stages:
            for bv in tiles:
                for gate in (0, 1):
                    c = dict(K=K, V=V, BT=64, BK=K, BV=bv, GATE=gate, PREC="tf32")
                    out.append((f"delta_bwd_dqk gate={gate} w={w} s={st} BV={bv}", tlin._delta_bwd_dqk_kernel, c, w,
                                st, ()))
                    out.append((f"delta_bwd_wy gate={gate} w={w} s={st} BV={bv}", tlin._delta_bwd_wy_kernel, c, w,
                                st, ()))
                    out.append((f"delta_bwd_wy_split gate={gate} w={w} s={st} BV={bv}",
                                tlin._delta_bwd_wy_split_kernel, dict(c, BK=16), w, st, ("dg_ptr",)))
                c = dict(K=K, V=V, BT=64, BK=K, BV=bv, PREC="tf32")
                out.append((f"delta_bwd_wy_split dw w={w} s={st} BV={bv}", tlin._delta_bwd_dw_kernel, c, w, st, ()))
                c = dict(K=K, V=V, BT=64, BK=K, BV=bv, GATE=1, PREC="tf32")
                out.append((f"linear_bwd gate=1 w={w} s={st} BV={bv}", tlin._linear_bwd_kernel, c, w, st, ("dg_ptr",)))
    return out


def launch_grid(prefixes) -> int:
    print(f"triton {triton.__version__}, sm_90, bf16, K=V=128, chunk 64: registers, spill bytes, shared KB, "
          "blocks per SM")
    failed = 0
    for label, fn, constexprs, warps, stages, fp32 in launch_grid_jobs():
        if prefixes and not any(label.startswith(p) for p in prefixes):
            continue
        try:
            compiled = compile_sm90(fn, constexprs, warps, stages, fp32)
        except Exception as e:  # report and go on
            failed += 1
            print(f"{label:48s} COMPILE FAILED {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
            continue
        rep = ptxas_report(compiled.asm["ptx"])
        shared = compiled.metadata.shared
        regs = rep.get("registers", 255)
        print(f"{label:48s} {regs:4d} {rep.get('spill_store_bytes') or 0:6d} {shared / 1024:7.1f} "
              f"{blocks_per_sm(regs, warps, shared):3d}", flush=True)
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated label prefixes")
    parser.add_argument("--launch-grid", action="store_true",
                        help="the per-chunk backward kernels over warps x stages x V tile: blocks per SM")
    args = parser.parse_args()
    prefixes = [p for p in args.only.split(",") if p]
    if args.launch_grid:
        return launch_grid(prefixes)
    print(f"triton {triton.__version__}, sm_90, bf16, K=V=128, chunk 64")
    failed = 0
    for label, fn, constexprs, warps, stages, fp32 in jobs():
        if prefixes and not any(label.startswith(p) for p in prefixes):
            continue
        try:
            compiled = compile_sm90(fn, constexprs, warps, stages, fp32)
        except Exception as e:  # report and go on: one broken variant must not hide the others
            failed += 1
            print(f"{label}: COMPILE FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}")
            continue
        instructions, labels = sass_instructions(compiled.asm["cubin"])
        report = {**ptxas_report(compiled.asm["ptx"]), "shared_bytes": compiled.metadata.shared,
                  "instructions": len(instructions)}
        print(f"{label}: {report}")
        for i, loop in enumerate(loops_of(instructions, labels)):
            body_ldg = loop.get("LDG", "")
            print(f"  loop {i}: {loop}{body_ldg}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
