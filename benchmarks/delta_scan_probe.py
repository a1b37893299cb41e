"""Why is the delta rule's backward state scan 2x fla's? Time variants of it on one GPU, kernel alone.

    python benchmarks/delta_scan_probe.py OUT.json [--T 32768] [--warm-only NAME]

Ungated delta rule, bf16, B=2, H=16, K=V=128, chunk 64 (issue 7's shape). Each variant is a copy of
`_state_bwd_kernel`'s ungated delta path with one change (a constexpr flag), timed by
triton.testing.do_bench beside our kernel as it ships and fla's `chunk_gated_delta_rule_bwd_dhu` on the same
inputs, in one process; ablations (no G_n store, no q^T do, no dv_new store) compute something else and are
there only to say where the time goes. Variants that compute the same thing are checked against ours.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from attnsearch.kernels import triton_linear as tlin  # noqa: E402


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _probe_scan_kernel(q_ptr, k_ptr, w_ptr, do_ptr, dvl_ptr, gs_ptr, dvn_ptr, scale, T, NT, H,
                       K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr,
                       TLOAD: tl.constexpr, FRESH: tl.constexpr, GS: tl.constexpr, QDO: tl.constexpr,
                       DVN: tl.constexpr, STEP: tl.constexpr):
    """TLOAD: q and w loaded as [K, BT] tiles (their transposes) instead of [BT, K] + tl.trans; FRESH: dv_new
    = k G_n first, dv_local added after (not as the matmul's accumulator); GS / QDO / DVN off: ablations;
    STEP: pointers stepped back by one chunk per iteration (no int64 multiply of the chunk index)."""
    iv = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    kk = tl.arange(0, K)
    vv = iv * BV + tl.arange(0, BV)
    ii = tl.arange(0, BT)
    kv_offs = kk[:, None] * V + vv[None, :]
    dstate = tl.zeros([K, BV], dtype=tl.float32)
    base = (bb * T).to(tl.int64) * H + hh
    step = BT * H
    for i in range(NT):
        n = NT - 1 - i
        if GS:
            tl.store(gs_ptr + (bh.to(tl.int64) * NT + n) * K * V + kv_offs, dstate.to(gs_ptr.dtype.element_ty))
        rows = n * BT + ii
        rmask = rows < T
        if STEP:
            tok = base + n.to(tl.int64) * step + ii * H
        else:
            tok = (bb * T + rows).to(tl.int64) * H + hh
        m_k = rmask[:, None]
        m_v = rmask[:, None]
        k_t = tl.load(k_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0)
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        dvl = tl.load(dvl_ptr + tok[:, None] * V + vv[None, :], mask=m_v, other=0)
        if TLOAD:
            qT = tl.load(q_ptr + tok[None, :] * K + kk[:, None], mask=rmask[None, :], other=0)
            wT = tl.load(w_ptr + tok[None, :] * K + kk[:, None], mask=rmask[None, :], other=0)
        else:
            qT = tl.trans(tl.load(q_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0))
            wT = tl.trans(tl.load(w_ptr + tok[:, None] * K + kk[None, :], mask=m_k, other=0))
        if FRESH:
            dv = tl.dot(k_t, dstate.to(k_t.dtype)) + dvl.to(tl.float32)
        else:
            dv = tl.dot(k_t, dstate.to(k_t.dtype), dvl.to(tl.float32))
        if DVN:
            tl.store(dvn_ptr + tok[:, None] * V + vv[None, :], dv.to(dvn_ptr.dtype.element_ty), mask=m_v)
        dnext = dstate - tl.dot(wT, dv.to(wT.dtype))
        if QDO:
            dnext += scale * tl.dot(qT, do_t)
        dstate = dnext


@triton.jit(do_not_specialize=['T', 'NT', 'H'])
def _probe_scan_halves_kernel(q_ptr, k_ptr, w_ptr, do_ptr, dvl_ptr, gs_ptr, dvn_ptr, scale, T, NT, H,
                              K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr):
    """K = 128 held as two [64, BV] states (fla's layout of this scan), q and w loaded transposed."""
    iv = tl.program_id(0)
    bh = tl.program_id(1)
    bb = bh // H
    hh = bh % H
    k1 = tl.arange(0, 64)
    k2 = 64 + k1
    vv = iv * BV + tl.arange(0, BV)
    ii = tl.arange(0, BT)
    d1 = tl.zeros([64, BV], dtype=tl.float32)
    d2 = tl.zeros([64, BV], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        gbase = gs_ptr + (bh.to(tl.int64) * NT + n) * K * V
        tl.store(gbase + k1[:, None] * V + vv[None, :], d1.to(gs_ptr.dtype.element_ty))
        tl.store(gbase + k2[:, None] * V + vv[None, :], d2.to(gs_ptr.dtype.element_ty))
        rows = n * BT + ii
        rmask = rows < T
        tok = (bb * T + rows).to(tl.int64) * H + hh
        do_t = tl.load(do_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None], other=0)
        ka = tl.load(k_ptr + tok[:, None] * K + k1[None, :], mask=rmask[:, None], other=0)
        dv = tl.dot(ka, d1.to(ka.dtype))
        kb = tl.load(k_ptr + tok[:, None] * K + k2[None, :], mask=rmask[:, None], other=0)
        dv = tl.dot(kb, d2.to(kb.dtype), dv)
        dv += tl.load(dvl_ptr + tok[:, None] * V + vv[None, :], mask=rmask[:, None], other=0).to(tl.float32)
        tl.store(dvn_ptr + tok[:, None] * V + vv[None, :], dv.to(dvn_ptr.dtype.element_ty), mask=rmask[:, None])
        dvb = dv.to(do_t.dtype)
        q1 = tl.load(q_ptr + tok[None, :] * K + k1[:, None], mask=rmask[None, :], other=0)
        w1 = tl.load(w_ptr + tok[None, :] * K + k1[:, None], mask=rmask[None, :], other=0)
        d1 += tl.dot(q1, do_t) * scale - tl.dot(w1, dvb)
        q2 = tl.load(q_ptr + tok[None, :] * K + k2[:, None], mask=rmask[None, :], other=0)
        w2 = tl.load(w_ptr + tok[None, :] * K + k2[:, None], mask=rmask[None, :], other=0)
        d2 += tl.dot(q2, do_t) * scale - tl.dot(w2, dvb)


FLAGS = dict(TLOAD=False, FRESH=False, GS=True, QDO=True, DVN=True, STEP=False)
# name -> (kernel, flags over FLAGS, BV, warps, stages, same result as ours?)
VARIANTS = {
    "copy": ("p", {}, 32, 4, 3, True),
    "tload": ("p", {"TLOAD": True}, 32, 4, 3, True),
    "fresh": ("p", {"FRESH": True}, 32, 4, 3, True),
    "tload_fresh": ("p", {"TLOAD": True, "FRESH": True}, 32, 4, 3, True),
    "step": ("p", {"STEP": True}, 32, 4, 3, True),
    "no_gs": ("p", {"GS": False}, 32, 4, 3, False),
    "no_qdo": ("p", {"QDO": False}, 32, 4, 3, False),
    "no_dvn": ("p", {"DVN": False}, 32, 4, 3, False),
    "no_gs_dvn": ("p", {"GS": False, "DVN": False}, 32, 4, 3, False),
    "halves_v32_w4_s2": ("h", {}, 32, 4, 2, True),
    "halves_v32_w4_s3": ("h", {}, 32, 4, 3, True),
    "halves_v32_w4_s4": ("h", {}, 32, 4, 4, True),
    "halves_v64_w4_s3": ("h", {}, 64, 4, 3, True),
    "halves_v32_w2_s3": ("h", {}, 32, 2, 3, True),
}


def inputs(T, device="cuda", dtype=torch.bfloat16, seed=0):
    B, H, K, V = 2, 16, 128, 128
    gen = torch.Generator(device=device).manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=gen, device=device, dtype=torch.float32)  # noqa: E731
    q, w, do, dvl = mk(B, T, H, K), mk(B, T, H, K) * 0.1, mk(B, T, H, V), mk(B, T, H, V)
    k = torch.nn.functional.normalize(mk(B, T, H, K), dim=-1)
    return [x.to(dtype).contiguous() for x in (q, k, w, do, dvl)]


def run_variant(name, q, k, w, do, dvl, scale):
    kind, flags, BV, warps, stages, _ = VARIANTS[name]
    B, T, H, K = q.shape
    V = do.shape[-1]
    NT = triton.cdiv(T, 64)
    gs = torch.empty(B, H, NT, K, V, dtype=q.dtype, device=q.device)
    dvn = torch.empty_like(do)
    grid = (triton.cdiv(V, BV), B * H)
    if kind == "p":
        fn = lambda: _probe_scan_kernel[grid](q, k, w, do, dvl, gs, dvn, scale, T, NT, H, K=K, V=V, BT=64,  # noqa
                                              BV=BV, **{**FLAGS, **flags}, num_warps=warps, num_stages=stages)
    else:
        fn = lambda: _probe_scan_halves_kernel[grid](q, k, w, do, dvl, gs, dvn, scale, T, NT, H, K=K, V=V,  # noqa
                                                     BT=64, BV=BV, num_warps=warps, num_stages=stages)
    return fn, gs, dvn


def ours(q, k, w, do, dvl, scale):
    cfg = tlin.default_config("delta_rule")
    holder = {}

    def fn():
        holder["r"] = tlin._state_bwd(q, k, w, None, do, dvl, None, scale, 64, cfg, 0, True, False)
    return fn, holder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--T", type=int, default=32768)
    ap.add_argument("--warm-only", default=None, help="compile one variant at a short T and exit")
    args = ap.parse_args()
    from triton.testing import do_bench
    if args.warm_only:
        x = inputs(256)
        if args.warm_only == "fla":
            from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu
            chunk_gated_delta_rule_bwd_dhu(*x[:3], x[3], x[4], scale=0.088, chunk_size=64)
        elif args.warm_only == "ours":
            ours(*x, 0.088)[0]()
        else:
            run_variant(args.warm_only, *x, 0.088)[0]()
        torch.cuda.synchronize()
        return
    q, k, w, do, dvl = inputs(args.T)
    scale = q.shape[-1] ** -0.5
    res = {"T": args.T, "shape": "bf16 B=2 H=16 K=V=128 chunk 64", "device": torch.cuda.get_device_name(),
           "triton": triton.__version__, "ms": {}, "max_abs_diff": {}}
    fo, holder = ours(q, k, w, do, dvl, scale)
    fo()
    gs_ref, _, dvn_ref = holder["r"]
    fla = None
    try:
        from fla.ops.common.chunk_delta_h import chunk_gated_delta_rule_bwd_dhu

        def fla():
            return chunk_gated_delta_rule_bwd_dhu(q, k, w, do, dvl, scale=scale, chunk_size=64)
        dh_f, _, dv2_f = fla()
        res["max_abs_diff"]["fla"] = [float((dh_f.float() - gs_ref.float().transpose(1, 2)).abs().max()),
                                      float((dv2_f.float() - dvn_ref.float()).abs().max())]
    except Exception as e:  # noqa: BLE001 (a missing or refusing fla leaves the rest)
        res["fla_error"] = repr(e)[:300]
    for name in VARIANTS:
        try:
            fn, gs, dvn = run_variant(name, q, k, w, do, dvl, scale)
            fn()
            if VARIANTS[name][-1]:
                res["max_abs_diff"][name] = [float((gs.float() - gs_ref.float()).abs().max()),
                                             float((dvn.float() - dvn_ref.float()).abs().max())]
        except Exception as e:  # noqa: BLE001
            res.setdefault("errors", {})[name] = repr(e)[:300]
    # rounds alternate every kernel, so that clock drift touches all alike
    timed = {"ours": fo, **({"fla": fla} if fla else {})}
    timed.update({n: run_variant(n, q, k, w, do, dvl, scale)[0] for n in VARIANTS if n not in res.get("errors", {})})
    rounds = {n: [] for n in timed}
    for _ in range(3):
        for n, fn in timed.items():
            rounds[n].append(do_bench(fn, warmup=10, rep=60))
    res["rounds_ms"] = rounds
    res["ms"] = {n: sorted(r)[1] for n, r in rounds.items()}
    res["vs_ours"] = {n: round(t / res["ms"]["ours"], 3) for n, t in res["ms"].items()}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for n in res["ms"]:
        print(f"{n:20s} {res['ms'][n]:.3f} ms  {res['vs_ours'][n]:.3f}x ours  diff {res['max_abs_diff'].get(n)}")


if __name__ == "__main__":
    main()
