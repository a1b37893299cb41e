"""Time our Triton block-sparse softmax attention beside SDPA (cuDNN, flash), compiled
FlexAttention with the same mask and fla's parallel_attn, in one run on one GPU.

    python benchmarks/attention.py OUT.json [--sweep | --tuned JSON] [--quick] [--only WORDS]

Cases (issue 6): bf16, B=2, H=16, D=128, causal: full at T=8192 and 32768, window 1024 at 8192
and 32768, random block-sparse (8 of 64 earlier 128-blocks per query block + own block) at 8192,
and dynamic top-k (8 blocks by pooled q.k) at 8192. Forward and forward+backward medians of
triton.testing.do_bench; ms, tokens/s and TFLOP/s counting visible (query, key) pairs only
(forward 4*D flops a pair, forward+backward 3.5x that); ratios to FlexAttention and cuDNN;
peak memory of forward+backward at T=32768.

Before timing, worker processes compile in parallel: a GPU correctness check of our kernel
(bf16 D=128 and fp32 D=64, default config and the backward variants, T=336 so no tile divides
it) against the fp32/fp64 reference, FlexAttention and fla of every case, and with --sweep every
candidate of benchmarks/attention_sweep.py. --sweep then times those candidates, adds the
winner to every case as an "ours_tuned" row and checks it against the fp32 reference at the
sweep shape (B=1); --tuned times a given config (merged over the default) as that row
instead. The JSON is rewritten after every step, so a run cut short still leaves what it
measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attnsearch.kernels import masks  # noqa: E402
from attnsearch.kernels.reference import softmax_attention_ref  # noqa: E402
from attnsearch.kernels import triton_attention as ta  # noqa: E402
from attnsearch.kernels.ops import softmax_attention  # noqa: E402

# ATTN_BENCH_SMOKE=1 (with TRITON_INTERPRET=1): the whole script on the CPU at tiny shapes in
# fp32, one call per timing; it checks the script's plumbing and measures nothing
SMOKE = os.environ.get("ATTN_BENCH_SMOKE", "0") == "1"
DEV = "cpu" if SMOKE else "cuda"
B, H, D = (1, 2, 16) if SMOKE else (2, 16, 128)
DTYPE = torch.float32 if SMOKE else torch.bfloat16
T0 = time.time()


def sync():
    if not SMOKE:
        torch.cuda.synchronize()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


# ------------------------------------------------------------------------------ counting

def visible_pairs(T, window=None, block_indices=None, block_size=128) -> int:
    """Visible (query, key) pairs summed over batch and heads."""
    if block_indices is None:
        if window is None or window >= T:
            per_head = T * (T + 1) // 2
        else:
            per_head = window * (window + 1) // 2 + (T - window) * window
        return per_head * B * H
    assert window is None, "benchmark cases with blocks carry no window"
    lists, counts = ta.forward_block_lists(block_indices)
    nb = lists.shape[2]
    rows = torch.full((nb,), block_size, dtype=torch.long, device=counts.device)
    rows[-1] = T - (nb - 1) * block_size
    own = (rows * (rows + 1) // 2).sum() * B * H        # causal pairs inside each own block
    listed = (counts.long() * rows * block_size).sum()  # listed blocks lie wholly in the past
    return int(own + listed)


def flops(pairs: int, backward: bool) -> float:
    return 4.0 * D * pairs * (3.5 if backward else 1.0)


# ------------------------------------------------------------------------------ methods

def bench(fn, grad_to_none=None, rep=200):
    if SMOKE:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    from triton.testing import do_bench
    return do_bench(fn, warmup=50, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def make_inputs(T, layout):
    g = torch.Generator(device=DEV).manual_seed(0)
    shape = (B, T, H, D) if layout == "bthd" else (B, H, T, D)
    q, k, v, do = (torch.randn(shape, device=DEV, dtype=DTYPE, generator=g) for _ in range(4))
    return [x.requires_grad_() for x in (q, k, v)], do


def timed(forward, inputs, do, rep):
    """fwd and fwd+bwd medians (ms) of forward(*inputs)."""
    fwd = bench(lambda: forward(*inputs), rep=rep)

    def step():
        forward(*inputs).backward(do)

    both = bench(step, grad_to_none=inputs, rep=rep)
    return fwd, both


def ours(window, block_indices, block_size, config=None):
    def run(q, k, v):
        return softmax_attention(q, k, v, window=window, block_indices=block_indices,
                                 block_size=block_size, backend="triton", config=config)
    return run


def sdpa(backend_name):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]

    def run(q, k, v):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


_FLEX = {}


def flex(T, window, block_indices, block_size):
    if SMOKE:
        raise RuntimeError("FlexAttention is not run in a smoke run")
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if "fn" not in _FLEX:
        import torch._dynamo as dynamo  # (a bare `import torch._dynamo` would shadow torch here)
        # every case brings its own mask_mod, hence a recompile; keep them all compiled
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(dynamo.config, knob):
                setattr(dynamo.config, knob, 256)
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    if block_indices is not None:
        nb = block_indices.shape[2]
        listed = torch.zeros(B, H, nb, nb + 1, dtype=torch.bool, device=DEV)
        listed.scatter_(3, block_indices.clamp(min=-1).masked_fill(block_indices < 0, nb), True)
        listed = listed[..., :nb].contiguous()

        def mask_mod(b, h, qi, ki):
            qb, kb = qi // block_size, ki // block_size
            return (ki <= qi) & ((qb == kb) | listed[b, h, qb, kb])
        mask = create_block_mask(mask_mod, B, H, T, T, device=DEV, BLOCK_SIZE=128)
    elif window is not None:
        def mask_mod(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < window)
        mask = create_block_mask(mask_mod, None, None, T, T, device=DEV, BLOCK_SIZE=128)
    else:
        def mask_mod(b, h, qi, ki):
            return ki <= qi
        mask = create_block_mask(mask_mod, None, None, T, T, device=DEV, BLOCK_SIZE=128)
    fn = _FLEX["fn"]
    return lambda q, k, v: fn(q, k, v, block_mask=mask)


def fla_parallel(window):
    from fla.ops.attn import parallel_attn
    return lambda q, k, v: parallel_attn(q, k, v, window_size=window)


# ------------------------------------------------------------------------------ correctness

CORRECTNESS_CONFIGS = ({}, {"dq_atomic": 1},
                       {"heads_inner": 1, "heads_inner_bwd": 0, "bwd_streams": 2})


def correctness_rows(dtype_name, d, config):
    """Our kernel (one dtype, head dim, config) vs the reference (fp32 for 16-bit inputs, fp64
    for fp32) on a small awkward shape, every pattern; max abs errors of o, dq, dk, dv."""
    dtype = getattr(torch, dtype_name)
    T, bs = (80, 16) if SMOKE else (336, 64)  # T is not a multiple of any tile
    torch.manual_seed(0)
    out = []
    bi = masks.random_block_indices(T, bs, 2, seed=1, batch=2, heads=4, device=DEV)
    cases = [("full", None, None), ("window", 100, None), ("blocks", None, bi), ("window+blocks", 40, bi)]
    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    for name, window, idx in cases:
        q, k, v, do = (torch.randn(2, T, 4, d, device=DEV, dtype=ref_dtype) for _ in range(4))
        ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
        ref = softmax_attention_ref(*ref_in, window=window, block_indices=idx, block_size=bs)
        ref.backward(do)
        ours_in = [x.to(dtype).requires_grad_() for x in (q, k, v)]
        o = softmax_attention(*ours_in, window=window, block_indices=idx, block_size=bs,
                              backend="triton", config=config)
        o.backward(do.to(dtype))
        errs = [(o.to(ref_dtype) - ref).abs().max().item()]
        errs += [(a.grad.to(ref_dtype) - b.grad).abs().max().item() for a, b in zip(ours_in, ref_in)]
        tol = 1e-4 if dtype == torch.float32 else 6e-2
        ok = all(e < tol for e in errs)
        out.append({"dtype": dtype_name, "D": d, "T": T, "case": name, "config": config,
                    "max_abs_err_o_dq_dk_dv": errs, "tol": tol, "ok": ok})
    return out


def correctness_jobs(fast):
    dtypes = (("bfloat16", 128),) if fast else (("bfloat16", 128), ("float32", 64))
    if SMOKE:  # the interpreter does not emulate bf16 arithmetic
        dtypes = (("float32", 32),)
    return [{"kind": "call", "fn": "correctness_rows", "args": (name, d, cfg)}
            for name, d in dtypes for cfg in CORRECTNESS_CONFIGS]


def tuned_correctness(tuned):
    """The tuned config at the sweep shape (B=1, H=16, T=8192, bf16, D=128) vs the fp32 torch
    reference on the same bf16-rounded inputs: relative L2 errors of o, dq, dk, dv."""
    out = []
    import attention_sweep
    T, bs = attention_sweep.T_SWEEP, 128
    for pattern, window in (("full", None), ("window", 1024), ("random", None)):
        g = torch.Generator(device=DEV).manual_seed(1)
        x = [torch.randn(1, T, H, D, device=DEV, dtype=DTYPE, generator=g) for _ in range(4)]
        idx = (masks.random_block_indices(T, bs, max(1, (T // bs) // 8), seed=0, batch=1, heads=H,
                                          device=DEV) if pattern == "random" else None)
        ref_in = [t.float().clone().requires_grad_() for t in x[:3]]
        ref = softmax_attention_ref(*ref_in, window=window, block_indices=idx, block_size=bs)
        ref.backward(x[3].float())
        ours_in = [t.detach().clone().requires_grad_() for t in x[:3]]
        o = softmax_attention(*ours_in, window=window, block_indices=idx, block_size=bs,
                              backend="triton", config=tuned)
        o.backward(x[3])
        rel = [((a.float() - b).norm() / b.norm()).item() for a, b in
               ((o, ref), *((p.grad, r.grad) for p, r in zip(ours_in, ref_in)))]
        ok = all(e < 1e-2 for e in rel)
        out.append({"pattern": pattern, "rel_err_o_dq_dk_dv": rel, "ok": ok})
        log(f"tuned correctness {pattern:7s} rel errs {['%.1e' % e for e in rel]} {'ok' if ok else 'FAIL'}")
        del ref, ref_in, o, ours_in
        if not SMOKE:
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------ table

def cases(quick):
    T1, T2 = (256, 384) if SMOKE else (2048, 4096) if quick else (8192, 32768)
    return [
        {"name": f"random 12.5% of 128-blocks T={T1}", "T": T1, "window": None, "blocks": "random"},
        {"name": f"full causal T={T1}", "T": T1, "window": None, "blocks": None},
        {"name": f"window 1024 T={T1}", "T": T1, "window": 1024, "blocks": None},
        {"name": f"window 1024 T={T2}", "T": T2, "window": 1024, "blocks": None},
        {"name": f"full causal T={T2}", "T": T2, "window": None, "blocks": None},
        {"name": f"top-8 of 128-blocks T={T1}", "T": T1, "window": None, "blocks": "topk"},
    ]


def case_block_indices(case, x_bthd):
    """The case's block_indices [B, H, NB, S] (None without blocks); top-k from x_bthd's q, k."""
    T, bs = case["T"], 128
    if case["blocks"] == "random":
        return masks.random_block_indices(T, bs, max(1, (T // bs) // 8), seed=0, batch=B, heads=H,
                                           device=DEV)
    if case["blocks"] == "topk":
        return masks.topk_block_indices(x_bthd[0].detach(), x_bthd[1].detach(), bs, 8)
    return None


def run_case(case, tuned, results):
    T, window = case["T"], case["window"]
    bs = 128
    rep = 400 if T > 16384 else 200
    x_bthd, do_bthd = make_inputs(T, "bthd")
    x_bhtd, do_bhtd = make_inputs(T, "bhtd")
    row = {"T": T, "window": window, "pattern": case["blocks"] or ("window" if window else "full")}
    idx = case_block_indices(case, x_bthd)
    if case["blocks"] == "topk":
        q, k = x_bthd[0].detach(), x_bthd[1].detach()
        row["topk_builder_ms"] = bench(lambda: masks.topk_block_indices(q, k, bs, 8), rep=100)
        log(f"{case['name']}: topk_block_indices on GPU {row['topk_builder_ms']:.3f} ms")
    pairs = visible_pairs(T, window, idx, bs)
    row["visible_pairs"] = pairs
    row["density"] = pairs / (B * H * T * (T + 1) / 2)
    methods = {"ours": (ours(window, idx, bs), "bthd")}
    if tuned:
        methods["ours_tuned"] = (ours(window, idx, bs, tuned), "bthd")
    if window is None and idx is None:
        methods["sdpa_cudnn"] = (sdpa("cudnn"), "bhtd")
        methods["sdpa_flash"] = (sdpa("flash"), "bhtd")
    methods["flex"] = (None, "bhtd")
    if idx is None:
        methods["fla_parallel_attn"] = (None, "bthd")
    row["methods"] = {}
    for name, (fn, layout) in methods.items():
        inputs, do = (x_bthd, do_bthd) if layout == "bthd" else (x_bhtd, do_bhtd)
        try:
            t = time.time()
            if name == "flex":
                fn = flex(T, window, idx, bs)
            elif name == "fla_parallel_attn":
                fn = fla_parallel(window)
            methods[name] = (fn, layout)
            fn(*inputs).backward(do)  # compile / warm
            sync()
            first = time.time() - t
            fwd, both = timed(fn, inputs, do, rep)
            m = {"fwd_ms": fwd, "fwd_bwd_ms": both, "first_call_s": first,
                 "fwd_tokens_per_s": B * T / (fwd / 1e3), "fwd_bwd_tokens_per_s": B * T / (both / 1e3),
                 "fwd_tflops": flops(pairs, False) / (fwd / 1e3) / 1e12,
                 "fwd_bwd_tflops": flops(pairs, True) / (both / 1e3) / 1e12}
            log(f"{case['name']:34s} {name:18s} fwd {fwd:8.3f} ms  fwd+bwd {both:8.3f} ms  "
                f"({m['fwd_tflops']:.0f} / {m['fwd_bwd_tflops']:.0f} TFLOP/s, first call {first:.1f}s)")
        except Exception as exc:
            m = {"error": repr(exc)[:300]}
            log(f"{case['name']:34s} {name:18s} failed: {repr(exc)[:200]}")
        row["methods"][name] = m
        for x in inputs:
            x.grad = None
    if T > 16384:
        row["peak_memory_fwd_bwd_bytes"] = peak_memory(row, methods, x_bthd, do_bthd, x_bhtd, do_bhtd)
    if tuned:
        # the tuned tiles must compute the same thing as the defaults
        a = ours(window, idx, bs)(*x_bthd)
        b = ours(window, idx, bs, tuned)(*x_bthd)
        row["tuned_vs_default_max_abs_diff"] = (a.float() - b.float()).abs().max().item()
    results["cases"][case["name"]] = row


def peak_memory(row, methods, x_bthd, do_bthd, x_bhtd, do_bhtd):
    out = {}
    for name in ("ours", "ours_tuned", "flex", "sdpa_cudnn"):
        if name not in methods or "error" in row["methods"].get(name, {"error": 1}):
            continue
        fn = methods[name][0]
        inputs, do = (x_bthd, do_bthd) if methods[name][1] == "bthd" else (x_bhtd, do_bhtd)
        for x in inputs:
            x.grad = None
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*inputs).backward(do)
        sync()
        out[name] = {"peak_above_inputs": torch.cuda.max_memory_allocated() - base}
        for x in inputs:
            x.grad = None
    log(f"peak memory fwd+bwd above inputs at T={row['T']}: "
        + ", ".join(f"{k} {v['peak_above_inputs'] / 2**20:.0f} MiB" for k, v in out.items()))
    return out


def print_table(results):
    print("\n| case | method | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s | fwd+bwd tok/s | "
          "ours/flex fwd, f+b | ours/cuDNN fwd, f+b |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cname, row in results["cases"].items():
        ms = row["methods"]
        for name, m in ms.items():
            if "error" in m:
                print(f"| {cname} | {name} | error | | | | | | |")
                continue
            ratio_flex = ratio_cudnn = ""
            if name.startswith("ours"):
                f = ms.get("flex", {})
                if "fwd_ms" in f:
                    ratio_flex = f"{m['fwd_ms'] / f['fwd_ms']:.2f}, {m['fwd_bwd_ms'] / f['fwd_bwd_ms']:.2f}"
                c = ms.get("sdpa_cudnn", {})
                if "fwd_ms" in c:
                    ratio_cudnn = f"{m['fwd_ms'] / c['fwd_ms']:.2f}, {m['fwd_bwd_ms'] / c['fwd_bwd_ms']:.2f}"
            print(f"| {cname} | {name} | {m['fwd_ms']:.3f} | {m['fwd_bwd_ms']:.3f} | {m['fwd_tflops']:.0f} | "
                  f"{m['fwd_bwd_tflops']:.0f} | {m['fwd_bwd_tokens_per_s']:.3g} | {ratio_flex} | {ratio_cudnn} |")


def warm_fla(T, window):
    """Run fla's parallel_attn once (its autotuning compiles kernels into the shared cache)."""
    x, do = make_inputs(T, "bthd")
    fla_parallel(window)(*x).backward(do)
    sync()
    return True


def precompile_all(args, results, default):
    """Correctness checks, FlexAttention, fla and (with --sweep) every sweep candidate, compiled
    by parallel worker processes; correctness rows go to results."""
    import attention_sweep
    flex_cases = [c for c in cases(args.quick) if _selected(c, args)]
    jobs = [] if args.skip_correctness else correctness_jobs(args.fast_correctness)
    n_corr = len(jobs)
    jobs += [{"kind": "flex", "case": c} for c in flex_cases]
    jobs += [{"kind": "call", "fn": "warm_fla", "args": (c["T"], c["window"])}
             for c in flex_cases if c["blocks"] is None]
    if args.sweep:
        jobs += [j for j in attention_sweep.warm_jobs(default, []) if j["kind"] == "ours"]
    t = time.time()
    log(f"precompiling {len(jobs)} jobs in {args.workers} worker processes")
    done = attention_sweep.precompile(jobs, workers=args.workers)
    failed = [(j.get("fn") or j["kind"], r.get("error")) for j, r in zip(jobs, done) if not r["ok"]]
    log(f"precompile done in {time.time() - t:.0f} s; {len(failed)} failed: {failed[:8]}")
    results["precompile"] = {"jobs": len(jobs), "seconds": time.time() - t,
                             "failed": [str(f)[:300] for f in failed]}
    rows = []
    for j, r in zip(jobs[:n_corr], done[:n_corr]):
        if r["ok"]:
            rows += r["result"]
        else:
            rows.append({"args": j["args"], "error": r.get("error"), "trace": r.get("trace")})
    for row in rows:
        if "error" in row:
            log(f"correctness {row['args']} failed: {row['error']}")
        else:
            log(f"correctness {row['dtype']:9s} D={row['D']:3d} {row['case']:14s} {row['config']} "
                f"errs={['%.1e' % e for e in row['max_abs_err_o_dq_dk_dv']]} {'ok' if row['ok'] else 'FAIL'}")
    results["correctness"] = rows


def _selected(case, args):
    words = [w for w in args.only.split(",") if w]
    return not words or any(w in case["name"] for w in words)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--sweep", action="store_true", help="time candidate configs, add ours_tuned")
    parser.add_argument("--quick", action="store_true", help="short sequences (smoke run)")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--fast-correctness", action="store_true", help="bf16 only (fp32 compiles slowly)")
    parser.add_argument("--only", default="", help="comma-separated words; run the cases whose name has one")
    parser.add_argument("--workers", type=int, default=12, help="processes compiling ahead")
    parser.add_argument("--tuned", default="", help="JSON config to time as ours_tuned (no sweep)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not SMOKE:
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")
    import triton
    default = ta.default_config("softmax_attention")
    results = {"device": "smoke (cpu)" if SMOKE else torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "shape": {"B": B, "H": H, "D": D, "dtype": "bfloat16"},
               "default_config": default, "cases": {}}

    def save():
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)

    try:
        precompile_all(args, results, default)
        save()
        tuned = {**default, **json.loads(args.tuned)} if args.tuned else None
        results["tuned_config"] = tuned
        if args.sweep:
            import attention_sweep
            tuned = attention_sweep.sweep(results)
            results["tuned_config"] = tuned
            save()
            try:
                results["tuned_correctness"] = tuned_correctness(tuned)
            except Exception:  # still time the cases; the JSON says what broke
                results["tuned_correctness"] = {"error": traceback.format_exc()[-1500:]}
                log(f"tuned correctness failed: {traceback.format_exc()[-300:]}")
            save()
        for case in cases(args.quick):
            if _selected(case, args):
                run_case(case, tuned, results)
                save()
    except Exception:
        results["fatal"] = traceback.format_exc()
        save()
        raise
    finally:
        print_table(results)
    log("done")


if __name__ == "__main__":
    main()
