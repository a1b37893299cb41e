"""One GPU session for the attention backward work: check every new kernel path, time the
candidates side by side with FlexAttention, and recommend a default config.

    python benchmarks/attention_session.py OUT.json [--workers 14] [--skip-check]

1. check: each new path (fuse_delta, list loads, grouped program order, all of them at once, and
   the committed default) against the fp32 torch reference on the same bf16 inputs, on full
   causal, window 1024, random 12.5% of 128-blocks and top-8 blocks, at T=8192 and T=3000 (no
   tile divides it); B=1, H=3 (groups of 2 leave a smaller last group). Relative L2 errors of
   o, dq, dk, dv; ok below 1e-2. Runs in worker processes, which also compile the kernels the
   timing step uses.
2. time: bf16 B=2 H=16 D=128 T=8192, the four patterns; forward and backward (kernels only,
   block lists prebuilt) of the default and of each option on its own, FlexAttention forward
   and forward+backward beside them. Each option's winner (smallest mean over patterns of
   time / best time of that pattern) goes into one combined config, which is timed too; the
   combined config is recommended when its mean relative forward+backward time beats the
   default's, else the default is.
The JSON is rewritten after every step. ATTN_BENCH_SMOKE=1 TRITON_INTERPRET=1 runs the plumbing
on the CPU at tiny fp32 shapes (no FlexAttention) and measures nothing.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attention  # noqa: E402  (benchmarks/attention.py: shapes, SMOKE, Flex wrapper, bench)

from attnsearch.kernels import masks  # noqa: E402
from attnsearch.kernels import triton_attention as ta  # noqa: E402
from attnsearch.kernels.ops import softmax_attention  # noqa: E402
from attnsearch.kernels.reference import softmax_attention_ref  # noqa: E402

SMOKE = attention.SMOKE
BS = 32 if SMOKE else 128
T_TIME = 128 if SMOKE else 8192
T_CHECK = (128, 80) if SMOKE else (8192, 3000)
WINDOW = 40 if SMOKE else 1024
PATTERNS = ("full", "window", "random", "topk")
LIST_KEYS = {"list_load", "list_load_dq", "list_load_dkv"}  # no effect without block lists
NO_LIST_KEYS = {"wide_mask_dkv"}  # no effect with block lists
FWD_KEYS = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "heads_inner", "head_group",
            "list_load"}

ALL_NEW = {"fuse_delta": 1, "list_load": 1, "list_load_dq": 1, "list_load_dkv": 1,
           "heads_inner": 1, "head_group": 2, "heads_inner_bwd": 1, "head_group_bwd": 2,
           "wide_mask_dkv": 1}
CHECK_CONFIGS = {
    "default": {},
    "fuse_delta": {"fuse_delta": 1},
    "wide_mask_dkv": {"wide_mask_dkv": 1},
    "list_loads": {"list_load": 1, "list_load_dq": 1, "list_load_dkv": 1},
    "head_groups": {"heads_inner": 1, "head_group": 2, "heads_inner_bwd": 1, "head_group_bwd": 2},
    "all_new": ALL_NEW,
}
# one option at a time over the default, the likeliest gains first (a run cut short by its
# time limit still has them); "order" options change the program order
OPTIONS = [
    ("bwd_order", [{"heads_inner_bwd": 1, "head_group_bwd": g} for g in (2, 4, 8)]
     + [{"heads_inner_bwd": 0, "head_group_bwd": 0}]),
    ("fuse_delta", [{"fuse_delta": 1}]),
    ("list_load_dkv", [{"list_load_dkv": 1}]),
    ("list_load_dq", [{"list_load_dq": 1}]),
    ("wide_mask_dkv", [{"wide_mask_dkv": 1}]),
    ("fwd_order", [{"heads_inner": 1, "head_group": 0}]
     + [{"heads_inner": 1, "head_group": g} for g in (2, 4, 8)]),
    ("list_load", [{"list_load": 1}]),
    # pipeline depth of the backward kernels (the diagonal tiles now spill less)
    ("dkv_stages", [{"num_stages_dkv": 2}, {"num_stages_dkv": 4}]),
    ("dq_stages", [{"num_stages_dq": 2}, {"num_stages_dq": 4}]),
]
if SMOKE:  # the interpreter is slow: one variant per option
    OPTIONS = [(name, variants[:1]) for name, variants in OPTIONS]
# an option must beat the default by this much (mean relative time) to be adopted: timing
# noise between do_bench runs is about 1%
NOISE = 0.01
T0 = time.time()


def log(msg: str) -> None:
    print(f"[session {time.time() - T0:6.1f}s] {msg}", flush=True)


def default_config() -> dict:
    return ta.default_config("softmax_attention")


# ------------------------------------------------------------------------------ inputs

def make_case(pattern, T, batch, heads, seed=0):
    """q, k, v, dO [batch, T, heads, D] in the benchmark dtype, block_indices or None, window."""
    g = torch.Generator(device=attention.DEV).manual_seed(seed)
    q, k, v, do = (torch.randn(batch, T, heads, attention.D, device=attention.DEV,
                               dtype=attention.DTYPE, generator=g) for _ in range(4))
    window = WINDOW if pattern == "window" else None
    idx = None
    if pattern == "random":
        idx = masks.random_block_indices(T, BS, max(1, (T // BS) // 8), seed=0, batch=batch,
                                         heads=heads, device=attention.DEV)
    elif pattern == "topk":
        idx = masks.topk_block_indices(q, k, BS, 8)
    return q, k, v, do, idx, window


# ------------------------------------------------------------------------------ 1. check

def check_config(name, T):
    """Rows of relative L2 errors of one named config at length T on every pattern."""
    cfg = {**default_config(), **CHECK_CONFIGS[name]}
    rows = []
    for pattern in PATTERNS:
        q, k, v, do, idx, window = make_case(pattern, T, 1, 3, seed=1)
        ref_in = [x.float().clone().requires_grad_() for x in (q, k, v)]
        ref = softmax_attention_ref(*ref_in, window=window, block_indices=idx, block_size=BS)
        ref.backward(do.float())
        ours_in = [x.clone().requires_grad_() for x in (q, k, v)]
        o = softmax_attention(*ours_in, window=window, block_indices=idx, block_size=BS,
                              backend="triton", config=cfg)
        o.backward(do)
        rel = [((a.float() - b).norm() / b.norm()).item() for a, b in
               ((o, ref), *((p.grad, r.grad) for p, r in zip(ours_in, ref_in)))]
        tol = 1e-4 if attention.DTYPE == torch.float32 else 1e-2
        rows.append({"config": name, "T": T, "pattern": pattern, "rel_err_o_dq_dk_dv": rel,
                     "tol": tol, "ok": all(e < tol for e in rel)})
        del ref, ref_in, o, ours_in
    return rows


def warm_config(overrides, pattern):
    """Compile forward and backward of default+overrides for the timing shape (B=1 specialises
    the kernels as B=2 does)."""
    q, k, v, do, idx, window = make_case(pattern, T_TIME, 1, attention.H)
    x = [t.requires_grad_() for t in (q, k, v)]
    softmax_attention(*x, window=window, block_indices=idx, block_size=BS, backend="triton",
                      config={**default_config(), **overrides}).backward(do)
    attention.sync()


def warm_flex(pattern):
    q, k, v, do, idx, window = make_case(pattern, T_TIME, attention.B, attention.H)
    x = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
    attention.flex(T_TIME, window, idx, BS)(*x).backward(do.transpose(1, 2).contiguous())
    attention.sync()


def _job(job):
    """Worker entry: one call, its result or its error (a failure must not end the session)."""
    if not SMOKE:
        torch.cuda.set_device(0)
        if job["fn"] == "warm_flex":
            import torch._inductor.config as inductor_config
            inductor_config.compile_threads = 1  # many workers compile at once already
    t = time.time()
    try:
        return {"ok": True, "result": globals()[job["fn"]](*job["args"]), "s": time.time() - t}
    except Exception as exc:
        return {"ok": False, "error": repr(exc)[:400], "trace": traceback.format_exc()[-1200:],
                "s": time.time() - t}


def run_jobs(jobs, workers):
    if workers <= 1 or SMOKE:
        return [_job(j) for j in jobs]
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        return list(pool.map(_job, jobs))


def check_and_warm(results, workers, skip_check, save):
    jobs = []
    if not skip_check:
        jobs += [{"fn": "check_config", "args": (name, T)} for T in T_CHECK for name in CHECK_CONFIGS]
    n_check = len(jobs)
    if not SMOKE:
        jobs += [{"fn": "warm_flex", "args": (p,)} for p in PATTERNS]
    # option variants on one pattern with and one without block lists (the kernels specialise
    # on that only); list-load variants only with block lists
    for _, variants in OPTIONS:
        for var in variants:
            for pattern in ("full", "random"):
                if (pattern == "full" and set(var) <= LIST_KEYS) or \
                        (pattern == "random" and set(var) <= NO_LIST_KEYS):
                    continue
                jobs.append({"fn": "warm_config", "args": (var, pattern)})
    log(f"{len(jobs)} jobs ({n_check} checks) in {workers} worker processes")
    done = run_jobs(jobs, workers)
    rows = []
    for job, r in zip(jobs[:n_check], done[:n_check]):
        rows += r["result"] if r["ok"] else [{"job": job["args"], "error": r["error"],
                                              "trace": r["trace"], "ok": False}]
    for row in rows:
        if "error" in row:
            log(f"check {row['job']} FAILED to run: {row['error']}")
        else:
            log(f"check {row['config']:11s} T={row['T']:5d} {row['pattern']:6s} rel errs "
                f"{['%.1e' % e for e in row['rel_err_o_dq_dk_dv']]} {'ok' if row['ok'] else 'FAIL'}")
    failed = [{"job": j["args"], "error": r["error"]} for j, r in zip(jobs[n_check:], done[n_check:])
              if not r["ok"]]
    results["check"] = rows
    results["check_all_ok"] = bool(rows) and all(r["ok"] for r in rows)
    results["warm_failures"] = failed
    log(f"check and warm done: all ok={results['check_all_ok']}, {len(failed)} warm jobs failed "
        f"{[f['job'] for f in failed][:6]}")
    save()
    # a config whose check failed must not be recommended
    return {r.get("config") or r["job"][0] for r in rows if not r["ok"]}


# ------------------------------------------------------------------------------ 2. time

class TimedCase:
    """One pattern at the timing shape with the default forward's outputs, so forward and
    backward kernels can be timed apart (block lists prebuilt, as a static pattern's are)."""

    def __init__(self, pattern):
        self.pattern = pattern
        q, k, v, self.do, self.idx, self.window = make_case(pattern, T_TIME, attention.B, attention.H)
        self.q, self.k, self.v = q, k, v
        if self.idx is not None:
            entry = ta.cached_block_lists(self.idx)
            self.lists, self.counts = entry["lists"], entry["counts"]
            self.tlists, self.tcounts = ta._transposed_of(entry)
        else:
            self.lists, self.counts = ta._empty_lists(q.device)
            self.tlists, self.tcounts = self.lists, self.counts
        self.scale = attention.D ** -0.5
        self.o, self.lse = ta._forward(q, k, v, self.plan(default_config()), self.lists,
                                       self.counts, self.scale)
        self._memo = {}

    def plan(self, cfg):
        return ta._Plan(T_TIME, self.window, self.idx, BS, cfg)

    def _key(self, cfg, part):
        keys = [k for k in sorted(cfg) if (k in FWD_KEYS) == (part == "fwd")]
        unused = LIST_KEYS if self.idx is None else NO_LIST_KEYS
        keys = [k for k in keys if k not in unused]
        return part, tuple((k, cfg[k]) for k in keys)

    def fwd_ms(self, cfg):
        key = self._key(cfg, "fwd")
        if key not in self._memo:  # same forward kernels as an earlier config: same time
            plan = self.plan(cfg)
            self._memo[key] = attention.bench(lambda: ta._forward(
                self.q, self.k, self.v, plan, self.lists, self.counts, self.scale), rep=100)
        return self._memo[key]

    def bwd_ms(self, cfg):
        key = self._key(cfg, "bwd")
        if key not in self._memo:
            plan = self.plan(cfg)
            self._memo[key] = attention.bench(lambda: ta._backward(
                self.q, self.k, self.v, self.o, self.lse, self.do, plan, self.lists, self.counts,
                self.tlists, self.tcounts, self.scale), rep=100)
        return self._memo[key]

    def flex_ms(self):
        x = [t.transpose(1, 2).contiguous().requires_grad_() for t in (self.q, self.k, self.v)]
        do = self.do.transpose(1, 2).contiguous()
        fn = attention.flex(T_TIME, self.window, self.idx, BS)
        fn(*x).backward(do)
        attention.sync()
        return attention.timed(fn, x, do, rep=100)


def measure(cases, cfg):
    out = {}
    for case in cases:
        try:
            f, b = case.fwd_ms(cfg), case.bwd_ms(cfg)
            out[case.pattern] = {"fwd_ms": f, "bwd_ms": b, "fwd_bwd_ms": f + b}
        except Exception as exc:
            return {"error": repr(exc)[:300]}
    return out


def mean_relative(rows, metric):
    """Per row, mean over patterns of time / best time of that pattern among the rows."""
    ok = [r for r in rows if "error" not in r["times"]]
    best = {p: min(r["times"][p][metric] for r in ok) for p in ok[0]["times"]}
    return [(sum(r["times"][p][metric] / best[p] for p in best) / len(best), r) for r in ok]


def time_candidates(results, save, broken_checks):
    default = default_config()
    cases = [TimedCase(p) for p in PATTERNS]
    timing = {"shape": f"bf16 B={attention.B} H={attention.H} D={attention.D} T={T_TIME}, "
                       f"block size {BS}", "flex": {}, "rows": []}
    results["timing"] = timing
    if not SMOKE:
        for case in cases:
            try:
                f, fb = case.flex_ms()
                timing["flex"][case.pattern] = {"fwd_ms": f, "fwd_bwd_ms": fb}
                log(f"flex {case.pattern:6s} fwd {f:.3f} fwd+bwd {fb:.3f} ms")
            except Exception as exc:
                timing["flex"][case.pattern] = {"error": repr(exc)[:300]}
                log(f"flex {case.pattern} failed: {exc!r}"[:300])
        save()

    def row(name, overrides):
        r = {"name": name, "overrides": overrides, "times": measure(cases, {**default, **overrides})}
        timing["rows"].append(r)
        t = r["times"]
        log(f"{name:34s} " + ("error " + t["error"] if "error" in t else "  ".join(
            f"{p} {t[p]['fwd_ms']:.3f}+{t[p]['bwd_ms']:.3f}" for p in t)))
        save()
        return r

    base = row("default", {})
    winners, winner_rows = {}, []
    for option, variants in OPTIONS:
        rows = [base] + [row(f"{option} {v}", v) for v in variants]
        # each option changes one direction's kernels only: judge it by that direction's time
        metric = "fwd_ms" if option in ("fwd_order", "list_load") else "bwd_ms"
        scored = mean_relative(rows, metric)
        score, best = min(scored, key=lambda s: s[0])
        base_score = next(sc for sc, r in scored if r is base)
        if best is not base and base_score - score < NOISE:
            best, score = base, base_score  # not clearly better than the default: keep it
        winners[option] = {"overrides": best["overrides"], "mean_relative": score, "metric": metric,
                           "default_mean_relative": base_score}
        if best is not base:
            winner_rows.append(best)
        log(f"option {option}: winner {best['overrides'] or 'default'} (mean relative {metric} "
            f"{score:.3f}, default {base_score:.3f})")
    combined = {}
    for w in winners.values():
        combined.update(w["overrides"])
    if broken_checks:  # a path whose check failed stays off
        log(f"checks failed for {sorted(broken_checks)}: those paths stay off")
        for name in broken_checks:
            for key in CHECK_CONFIGS.get(name, {}):
                combined[key] = default[key]
        winner_rows = [r for r in winner_rows if all(
            r["overrides"].get(k, default[k]) == default[k]
            for name in broken_checks for k in CHECK_CONFIGS.get(name, {}))]
    combined = {k: v for k, v in combined.items() if v != default[k]}
    # final candidates: the default, each option's winner alone, and all winners combined
    final = [base] + winner_rows
    if combined and all(combined != r["overrides"] for r in final):
        try:
            ta.validate_config("softmax_attention", {**default, **combined}, block_size=BS,
                               head_dim=attention.D)
            final.append(row("combined", combined))
        except ValueError as exc:
            log(f"combined config invalid: {exc}")
    scored = mean_relative(final, "fwd_bwd_ms")
    score, best = min(scored, key=lambda s: s[0])
    base_score = next(sc for sc, r in scored if r is base)
    if base_score - score < NOISE:
        best = base
    timing["final_mean_relative_fwd_bwd"] = {r["name"]: sc for sc, r in scored}
    timing["winners"] = winners
    timing["combined_overrides"] = combined
    timing["recommended_overrides"] = best["overrides"]
    timing["recommended_config"] = {**default, **best["overrides"]}
    for case in cases:
        f = timing["flex"].get(case.pattern, {})
        if "fwd_bwd_ms" in f:
            for r in final:
                t = r["times"].get(case.pattern)
                if t:
                    log(f"{r['name'][:30]:30s} {case.pattern:6s} / flex: fwd {t['fwd_ms'] / f['fwd_ms']:.2f}, "
                        f"fwd+bwd {t['fwd_bwd_ms'] / f['fwd_bwd_ms']:.2f}")
    log(f"recommended overrides over the default: {best['overrides'] or 'none (keep the default)'}")
    save()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not SMOKE:
        raise SystemExit("benchmarks/attention_session.py needs a CUDA GPU")
    import triton
    results = {"device": "smoke (cpu)" if SMOKE else torch.cuda.get_device_name(),
               "torch": torch.__version__, "triton": triton.__version__,
               "default_config": default_config()}

    def save():
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)

    broken = set()
    try:
        broken = check_and_warm(results, args.workers, args.skip_check, save)
    except Exception:
        results["check_fatal"] = traceback.format_exc()[-2000:]
        log(f"check/warm step failed: {traceback.format_exc()[-500:]}")
        save()
    try:
        time_candidates(results, save, broken)
    except Exception:
        results["timing_fatal"] = traceback.format_exc()[-2000:]
        log(f"timing step failed: {traceback.format_exc()[-500:]}")
    save()
    log("done")


if __name__ == "__main__":
    main()
