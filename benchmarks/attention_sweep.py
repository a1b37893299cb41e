"""Sweep the tunables of our Triton softmax attention on one GPU; used by attention.py --sweep.

Shape: bf16, B=2, H=16, D=128, T=8192, three patterns (full causal, window 1024, random 12.5% of
128-blocks + own block). Stages, each keeping the winner of the one before:
  fwd   forward tiles/warps/stages;
  dkv   backward-only time, dK/dV kernel tiles varied (dQ kernel at the default);
  dq    backward-only time, dQ kernel tiles varied;
  order forward + backward time of program order (heads_inner for the forward kernel,
        heads_inner_bwd for the backward ones), dQ on a side stream (bwd_streams) and dQ by
        atomics (dq_atomic, with a few dK/dV tiles of its own).
Winner of a stage: the smallest mean over patterns of time / best time of that pattern, so
every pattern counts the same. Candidates that fail to compile (shared memory) are skipped.

Every candidate is compiled first by worker processes in parallel (B=1 inputs specialise the
kernels exactly as B=2 ones do; the Triton cache on disk is shared), and FlexAttention of each
benchmark case is compiled there too, so the timing loops only load kernels.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
import traceback

import torch

import attention  # benchmarks/attention.py: shapes, inputs, FlexAttention and fla wrappers

B, H, D, BS = attention.B, attention.H, attention.D, 128
T_SWEEP = 256 if attention.SMOKE else 8192
PATTERNS = {"full": (None, None), "window": (1024, None), "random": (None, "random")}

FWD_GRID = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s) for m, n, w, s in (
    (128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 4), (128, 128, 8, 2), (128, 128, 8, 3),
    (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 2))]
DKV_GRID = [dict(BLOCK_M_DKV=m, BLOCK_N_DKV=n, num_warps_dkv=w, num_stages_dkv=s) for m, n, w, s in (
    (64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 8, 3), (32, 128, 8, 4), (64, 64, 4, 3),
    (64, 64, 8, 3), (128, 64, 8, 2), (32, 64, 4, 3))]
DQ_GRID = [dict(BLOCK_M_DQ=m, BLOCK_N_DQ=n, num_warps_dq=w, num_stages_dq=s) for m, n, w, s in (
    (128, 64, 8, 3), (128, 64, 8, 2), (128, 32, 4, 3), (128, 32, 8, 3), (64, 64, 4, 3),
    (128, 128, 8, 2), (64, 128, 4, 2))]
ORDER_GRID = [dict(heads_inner=hi, heads_inner_bwd=hb, bwd_streams=st, dq_atomic=0)
              for hi in (0, 1) for hb in (0, 1) for st in (1, 2)]
ATOMIC_DKV = [dict(BLOCK_M_DKV=m, BLOCK_N_DKV=n, num_warps_dkv=w, num_stages_dkv=s) for m, n, w, s in (
    (64, 128, 8, 2), (32, 128, 8, 3), (64, 64, 4, 3))]


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------ inputs

def inputs(T, batch, pattern, seed=0):
    """q, k, v [batch, T, H, D] bf16 (leaves), dO, block_indices or None, window."""
    from attnsearch.kernels import masks
    window, blocks = PATTERNS[pattern]
    g = torch.Generator(device=attention.DEV).manual_seed(seed)
    q, k, v, do = (torch.randn(batch, T, H, D, device=attention.DEV, dtype=attention.DTYPE,
                               generator=g) for _ in range(4))
    idx = None
    if blocks == "random":
        idx = masks.random_block_indices(T, BS, max(1, (T // BS) // 8), seed=0, batch=batch,
                                         heads=H, device=attention.DEV)
    return [x.requires_grad_() for x in (q, k, v)], do, idx, window


def candidates(default):
    """Every config the stages may time (for compiling ahead); the order stage combines the
    winners, so all its combinations over the tile grids are compiled too (dq_atomic only with
    ATOMIC_DKV tiles)."""
    out = [{**default, **c} for c in FWD_GRID + DKV_GRID + DQ_GRID]
    flip = {"heads_inner": 1 - default["heads_inner"],
            "heads_inner_bwd": 1 - default["heads_inner_bwd"]}   # the other program order
    out += [{**default, **c, **flip} for c in FWD_GRID + DKV_GRID + DQ_GRID]
    out += [{**default, **c, "dq_atomic": 1, "heads_inner_bwd": hb} for c in ATOMIC_DKV
            for hb in (0, 1)]
    return out


# ------------------------------------------------------------------------------ workers

def _warm_ours(cfg, pattern):
    """Compile forward and backward kernels of cfg for the sweep shape (B=1 specialises alike)."""
    from attnsearch.kernels.ops import softmax_attention
    (q, k, v), do, idx, window = inputs(T_SWEEP, 1, pattern)
    o = softmax_attention(q, k, v, window=window, block_indices=idx, block_size=BS,
                          backend="triton", config=cfg)
    o.backward(do)
    attention.sync()


def _warm_job(job):
    if not attention.SMOKE:
        torch.cuda.set_device(0)
    t = time.time()
    try:
        if job["kind"] == "ours":
            _warm_ours(job["cfg"], job["pattern"])
        elif job["kind"] == "flex":
            import torch._inductor.config as inductor_config
            inductor_config.compile_threads = 1  # many workers compile at once already
            case = job["case"]
            x, do = attention.make_inputs(case["T"], "bhtd")
            idx = attention.case_block_indices(case, attention.make_inputs(case["T"], "bthd")[0])
            fn = attention.flex(case["T"], case["window"], idx, BS)
            fn(*x).backward(do)
            attention.sync()
        elif job["kind"] == "call":
            return {"ok": True, "result": getattr(attention, job["fn"])(*job.get("args", ())),
                    "s": time.time() - t}
        return {"ok": True, "s": time.time() - t}
    except Exception as exc:  # e.g. out of shared memory: the timing stage skips it too
        return {"ok": False, "error": repr(exc)[:300], "trace": traceback.format_exc()[-800:],
                "s": time.time() - t}


def precompile(jobs, workers=12):
    """Run warm jobs in spawned processes; returns their results in job order."""
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_warm_job, jobs))


def warm_jobs(default, flex_cases):
    jobs = [{"kind": "flex", "case": c} for c in flex_cases]      # the slowest first
    seen = set()
    for cfg in candidates(default):
        for pattern in PATTERNS:
            key = (tuple(sorted(cfg.items())), pattern)
            if key not in seen:
                seen.add(key)
                jobs.append({"kind": "ours", "cfg": cfg, "pattern": pattern})
    return jobs


# ------------------------------------------------------------------------------ timing

def _bench(fn):
    if attention.SMOKE:
        return attention.bench(fn)
    from triton.testing import do_bench
    return do_bench(fn, warmup=20, rep=60, return_mode="median")


class Case:
    """Inputs of one pattern at the sweep shape, plus forward outputs for backward-only timing."""

    def __init__(self, pattern):
        from attnsearch.kernels import triton_attention as ta
        self.ta = ta
        self.pattern = pattern
        (q, k, v), self.do, self.idx, self.window = inputs(T_SWEEP, B, pattern)
        self.q, self.k, self.v = q.detach(), k.detach(), v.detach()
        default = ta.default_config("softmax_attention")
        if self.idx is not None:
            entry = ta.cached_block_lists(self.idx)
            self.lists, self.counts = entry["lists"], entry["counts"]
            self.tlists, self.tcounts = ta._transposed_of(entry)
        else:
            self.lists, self.counts = ta._empty_lists(self.q.device)
            self.tlists, self.tcounts = self.lists, self.counts
        self.o, self.lse = ta._forward(self.q, self.k, self.v, self.plan(default), self.lists,
                                       self.counts, D ** -0.5)

    def plan(self, cfg):
        return self.ta._Plan(T_SWEEP, self.window, self.idx, BS, cfg)

    def fwd_ms(self, cfg):
        plan = self.plan(cfg)
        return _bench(lambda: self.ta._forward(self.q, self.k, self.v, plan, self.lists,
                                               self.counts, D ** -0.5))

    def bwd_ms(self, cfg):
        plan = self.plan(cfg)
        return _bench(lambda: self.ta._backward(self.q, self.k, self.v, self.o, self.lse, self.do,
                                                plan, self.lists, self.counts, self.tlists,
                                                self.tcounts, D ** -0.5))


def _stage(name, cases, base, variants, measure, rows):
    """Time base+variant on every case; return the winning full config (mean relative time)."""
    times = []
    for var in variants:
        cfg = {**base, **var}
        per_case = {}
        for case in cases:
            try:
                per_case[case.pattern] = measure(case, cfg)
            except Exception as exc:
                per_case = {"error": repr(exc)[:200]}
                break
        rows.append({"stage": name, **var, **per_case})
        log(f"{name} {var} " + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in per_case.items()))
        if "error" not in per_case:
            times.append((cfg, per_case))
    if not times:
        return base
    best_per_case = {p: min(t[1][p] for t in times) for p in times[0][1]}
    scored = [(sum(t[1][p] / best_per_case[p] for p in best_per_case) / len(best_per_case), t[0])
              for t in times]
    score, cfg = min(scored, key=lambda s: s[0])
    log(f"{name} winner (mean relative time {score:.3f}): "
        + str({k: cfg[k] for k in variants[0]}))
    return cfg


def _smoke_grids():
    """Two candidates per grid in a smoke run (the interpreter is slow)."""
    global FWD_GRID, DKV_GRID, DQ_GRID, ATOMIC_DKV
    FWD_GRID, DKV_GRID, DQ_GRID, ATOMIC_DKV = FWD_GRID[:2], DKV_GRID[:2], DQ_GRID[:2], ATOMIC_DKV[:1]


if attention.SMOKE:
    _smoke_grids()


def sweep(results):
    """The four stages on the three patterns; returns the tuned full config."""
    from attnsearch.kernels import triton_attention as ta
    default = ta.default_config("softmax_attention")
    cases = [Case(p) for p in PATTERNS]
    rows = []
    results["sweep"] = {"shape": f"bf16 B={B} H={H} T={T_SWEEP} D={D}, patterns {list(PATTERNS)}",
                        "rows": rows}
    best = _stage("fwd", cases, default, FWD_GRID, Case.fwd_ms, rows)
    best = _stage("dkv", cases, best, DKV_GRID, Case.bwd_ms, rows)
    best = _stage("dq", cases, best, DQ_GRID, Case.bwd_ms, rows)
    both = (lambda case, cfg: case.fwd_ms(cfg) + case.bwd_ms(cfg))
    order = list(ORDER_GRID)
    order += [{**c, "heads_inner_bwd": hb, "bwd_streams": 1, "dq_atomic": 1}
              for c in ATOMIC_DKV for hb in (0, 1)]
    # the order variants must all carry the same keys for the table and the winner print
    keys = set().union(*order)
    order = [{**{k: best[k] for k in keys}, **o} for o in order]
    best = _stage("order", cases, best, order, both, rows)
    results["sweep"]["best"] = best
    log(f"tuned config {best}")
    return best
