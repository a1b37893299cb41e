"""Time our Triton block-sparse softmax attention beside SDPA (cuDNN, flash), compiled
FlexAttention with the same mask and fla's parallel_attn, in one run on one GPU.

    python benchmarks/attention.py OUT.json [--sweep] [--quick]

Cases (issue 6): bf16, B=2, H=16, D=128, causal: full at T=8192 and 32768, window 1024 at 8192
and 32768, random block-sparse (8 of 64 earlier 128-blocks per query block + own block) at 8192,
and dynamic top-k (8 blocks by pooled q.k) at 8192. Forward and forward+backward medians of
triton.testing.do_bench; ms, tokens/s and TFLOP/s counting visible (query, key) pairs only
(forward 4*D flops a pair, forward+backward 3.5x that); ratios to FlexAttention and cuDNN;
peak memory of forward+backward at T=32768. Before timing, a GPU correctness check of our
kernel (bf16 D=128, fp32 D=64) against the fp32/fp64 reference on a small shape
(--fast-correctness: bf16 only). With --sweep, a few backward tile configs are timed first
(backward only, full causal T=8192, the dK/dV and dQ kernels varied separately) and the best
are added to every case as an "ours_tuned" row. The JSON is rewritten after every step, so a
run cut short still leaves what it measured.
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

B, H, D = 2, 16, 128
DTYPE = torch.bfloat16
T0 = time.time()


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
    from triton.testing import do_bench
    return do_bench(fn, warmup=50, rep=rep, grad_to_none=grad_to_none, return_mode="median")


def make_inputs(T, layout):
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (B, T, H, D) if layout == "bthd" else (B, H, T, D)
    q, k, v, do = (torch.randn(shape, device="cuda", dtype=DTYPE, generator=g) for _ in range(4))
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
        listed = torch.zeros(B, H, nb, nb + 1, dtype=torch.bool, device="cuda")
        listed.scatter_(3, block_indices.clamp(min=-1).masked_fill(block_indices < 0, nb), True)
        listed = listed[..., :nb].contiguous()

        def mask_mod(b, h, qi, ki):
            qb, kb = qi // block_size, ki // block_size
            return (ki <= qi) & ((qb == kb) | listed[b, h, qb, kb])
        mask = create_block_mask(mask_mod, B, H, T, T, device="cuda", BLOCK_SIZE=128)
    elif window is not None:
        def mask_mod(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < window)
        mask = create_block_mask(mask_mod, None, None, T, T, device="cuda", BLOCK_SIZE=128)
    else:
        def mask_mod(b, h, qi, ki):
            return ki <= qi
        mask = create_block_mask(mask_mod, None, None, T, T, device="cuda", BLOCK_SIZE=128)
    fn = _FLEX["fn"]
    return lambda q, k, v: fn(q, k, v, block_mask=mask)


def fla_parallel(window):
    from fla.ops.attn import parallel_attn
    return lambda q, k, v: parallel_attn(q, k, v, window_size=window)


# ------------------------------------------------------------------------------ correctness

def gpu_correctness(results, fast=False):
    """Our kernel in bf16/fp16/fp32 vs the reference (fp32 / fp64) on a small awkward shape."""
    T, bs = 336, 64          # T is not a multiple of any tile
    torch.manual_seed(0)
    out = []
    bi = masks.random_block_indices(T, bs, 2, seed=1, batch=2, heads=4, device="cuda")
    cases = [("full", None, None), ("window", 100, None), ("blocks", None, bi), ("window+blocks", 40, bi)]
    dtypes = ((torch.bfloat16, 128),) if fast else ((torch.bfloat16, 128), (torch.float32, 64))
    for dtype, d in dtypes:
        ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
        for name, window, idx in cases:
            q, k, v, do = (torch.randn(2, T, 4, d, device="cuda", dtype=ref_dtype) for _ in range(4))
            ref_in = [x.clone().requires_grad_() for x in (q, k, v)]
            ref = softmax_attention_ref(*ref_in, window=window, block_indices=idx, block_size=bs)
            ref.backward(do)
            ours_in = [x.to(dtype).requires_grad_() for x in (q, k, v)]
            o = softmax_attention(*ours_in, window=window, block_indices=idx, block_size=bs,
                                  backend="triton")
            o.backward(do.to(dtype))
            errs = [(o.to(ref_dtype) - ref).abs().max().item()]
            errs += [(a.grad.to(ref_dtype) - b.grad).abs().max().item() for a, b in zip(ours_in, ref_in)]
            tol = 1e-4 if dtype == torch.float32 else 6e-2
            ok = all(e < tol for e in errs)
            out.append({"dtype": str(dtype), "D": d, "T": T, "case": name, "max_abs_err_o_dq_dk_dv": errs,
                        "tol": tol, "ok": ok})
            log(f"correctness {str(dtype):15s} D={d:3d} {name:14s} errs={['%.1e' % e for e in errs]} "
                f"{'ok' if ok else 'FAIL'}")
    results["correctness"] = out


# ------------------------------------------------------------------------------ sweep

DKV_SWEEP = [dict(BLOCK_M_DKV=m, BLOCK_N_DKV=n, num_warps_dkv=w, num_stages_dkv=s) for m, n, w, s in (
    (64, 128, 8, 2), (64, 64, 4, 2), (64, 128, 8, 3), (64, 64, 8, 3), (32, 128, 8, 2), (128, 64, 8, 2))]
DQ_SWEEP = [dict(BLOCK_M_DQ=m, BLOCK_N_DQ=n, num_warps_dq=w, num_stages_dq=s) for m, n, w, s in (
    (128, 64, 8, 2), (64, 64, 4, 2), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 2), (64, 128, 4, 2))]


def sweep(results):
    """Backward-only time (delta + dK/dV + dQ kernels) on full causal T=8192: vary the dK/dV
    kernel's tiles with dQ's at default, then dQ's with dK/dV's at default; keep the best of each."""
    T = 8192
    (q, k, v), do = make_inputs(T, "bthd")
    q, k, v = q.detach(), k.detach(), v.detach()
    default = ta.default_config("softmax_attention")
    scale = D ** -0.5
    lists, counts = ta._empty_lists(q.device)
    o, lse = ta._forward(q, k, v, ta._Plan(T, None, None, 64, default), lists, counts, scale)
    rows, best = [], {}
    for part, space in (("dkv", DKV_SWEEP), ("dq", DQ_SWEEP)):
        timings = []
        for cfg in space:
            plan = ta._Plan(T, None, None, 64, {**default, **cfg})
            try:
                ms = bench(lambda: ta._backward(q, k, v, o, lse, do, plan, lists, counts, lists, counts,
                                                scale), rep=100)
                timings.append((ms, cfg))
                rows.append({"part": part, **cfg, "bwd_ms": ms})
                log(f"sweep {part} {cfg} backward {ms:.3f} ms")
            except Exception as exc:  # a config may not fit shared memory for D=128
                rows.append({"part": part, **cfg, "error": repr(exc)[:200]})
                log(f"sweep {part} {cfg} failed: {repr(exc)[:120]}")
        best.update(min(timings, key=lambda t: t[0])[1])
    tuned = {**default, **best}
    results["sweep"] = {"shape": f"backward only, full causal B={B} H={H} T={T} D={D} bf16",
                        "rows": rows, "best": tuned}
    log(f"sweep best {tuned}")
    return tuned


# ------------------------------------------------------------------------------ table

def cases(quick):
    T1, T2 = (2048, 4096) if quick else (8192, 32768)
    return [
        {"name": f"random 12.5% of 128-blocks T={T1}", "T": T1, "window": None, "blocks": "random"},
        {"name": f"full causal T={T1}", "T": T1, "window": None, "blocks": None},
        {"name": f"window 1024 T={T1}", "T": T1, "window": 1024, "blocks": None},
        {"name": f"window 1024 T={T2}", "T": T2, "window": 1024, "blocks": None},
        {"name": f"full causal T={T2}", "T": T2, "window": None, "blocks": None},
        {"name": f"top-8 of 128-blocks T={T1}", "T": T1, "window": None, "blocks": "topk"},
    ]


def run_case(case, tuned, results):
    T, window = case["T"], case["window"]
    bs = 128
    rep = 400 if T > 16384 else 200
    x_bthd, do_bthd = make_inputs(T, "bthd")
    x_bhtd, do_bhtd = make_inputs(T, "bhtd")
    idx = None
    row = {"T": T, "window": window, "pattern": case["blocks"] or ("window" if window else "full")}
    if case["blocks"] == "random":
        idx = masks.random_block_indices(T, bs, (T // bs) // 8, seed=0, batch=B, heads=H, device="cuda")
    elif case["blocks"] == "topk":
        q, k = x_bthd[0].detach(), x_bthd[1].detach()
        idx = masks.topk_block_indices(q, k, bs, 8)
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
            torch.cuda.synchronize()
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
    for name in ("ours", "flex", "sdpa_cudnn"):
        if name not in methods or "error" in row["methods"].get(name, {"error": 1}):
            continue
        fn = methods[name][0]
        inputs, do = (x_bthd, do_bthd) if methods[name][1] == "bthd" else (x_bhtd, do_bhtd)
        for x in inputs:
            x.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(*inputs).backward(do)
        torch.cuda.synchronize()
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--sweep", action="store_true", help="time a few configs, add ours_tuned")
    parser.add_argument("--quick", action="store_true", help="short sequences (smoke run)")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--fast-correctness", action="store_true", help="bf16 only (fp32 compiles slowly)")
    parser.add_argument("--only", default="", help="comma-separated words; run the cases whose name has one")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU")
    import triton
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "shape": {"B": B, "H": H, "D": D, "dtype": "bfloat16"},
               "default_config": ta.default_config("softmax_attention"), "cases": {}}

    def save():
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)

    try:
        if not args.skip_correctness:
            gpu_correctness(results, fast=args.fast_correctness)
            save()
        tuned = sweep(results) if args.sweep else None
        save()
        words = [w for w in args.only.split(",") if w]
        for case in cases(args.quick):
            if words and not any(w in case["name"] for w in words):
                continue
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
