"""Benchmark: our Triton linear attention / delta rule beside flash-linear-attention and cuDNN SDPA.

One H200, bf16, B=2, H=16, K=V=128, T in {8192, 32768} (override with --T 8192,32768 --B 2 ...).
For each op: forward and forward+backward medians of triton.testing.do_bench (ms; 3 rounds that
alternate ours / fla, the median of the rounds, so that drift during the run falls on both), tokens/s,
the ratio to fla's nearest op (ours / fla; <= 1 means we are at least as fast), and the
forward's ratio to the memory floor (bytes of q, k, v read + o written at 4.26 TB/s). Peak GPU
memory of forward+backward (above the inputs) at the largest T, ours beside fla. fla's refusals
(its gated kernels raise on Hopper with Triton < 3.7.1) are caught and recorded.

  python benchmarks/linear.py out.json [--T 8192,32768] [--ops linear,retention,...] [--no-fla] [--no-sdpa]

Needs CUDA and, for the comparison, fla-core 0.6 (wheels via ../shared/device/wheels.sh).
benchmarks/linear_h200.py runs the whole tune / gradient-check / compare flow in one GPU call.
The JSON is rewritten after every measurement, so a run cut short still leaves its numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from attnsearch import kernels

HBM_BYTES_PER_S = 4.26e12  # device-to-device copy rate measured on the H200 (KINDS.md)

# our op name -> (fla import path, fla function, short description)
OPS = {
    "linear": ("fla.ops.linear_attn", "chunk_linear_attn", "no gate (Linear Transformer)"),
    "retention": ("fla.ops.retention", "chunk_retention", "fixed [H] decay (RetNet)"),
    "mamba2": ("fla.ops.simple_gla", "chunk_simple_gla", "scalar [B,T,H] gate (Mamba-2 / SSD)"),
    "gla": ("fla.ops.gla", "chunk_gla", "per-channel [B,T,H,K] gate (GLA)"),
    "delta": ("fla.ops.delta_rule", "chunk_delta_rule", "delta rule (DeltaNet)"),
    "gated_delta": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule", "gated delta rule"),
}


def make_inputs(op, B, T, H, K, V, device, dtype=torch.bfloat16, seed=0):
    torch.manual_seed(seed)
    q = torch.randn(B, T, H, K, device=device, dtype=dtype)
    k = torch.randn(B, T, H, K, device=device, dtype=dtype)
    v = torch.randn(B, T, H, V, device=device, dtype=dtype)
    x = {"q": q, "k": k, "v": v}
    if op in ("delta", "gated_delta"):
        x["k"] = F.normalize(k.float(), dim=-1).to(dtype)
        x["beta"] = torch.rand(B, T, H, device=device, dtype=dtype)
    if op == "retention":
        x["g_head"] = torch.log(1 - 2.0 ** (-5.0 - torch.arange(H, device=device, dtype=torch.float32)))
    if op in ("mamba2", "gated_delta"):
        x["g"] = F.logsigmoid(torch.randn(B, T, H, device=device)).to(dtype)
    if op == "gla":
        x["g"] = (F.logsigmoid(torch.randn(B, T, H, K, device=device)) / 16).to(dtype)
    return x


def group(op: str) -> str:
    """The kernel op (and config group) of a benchmark op."""
    return "delta_rule" if op in ("delta", "gated_delta") else "linear_attention"


def ours_fn(op, x, config=None, chunk_size=64):
    if op in ("delta", "gated_delta"):
        return lambda: kernels.delta_rule(x["q"], x["k"], x["v"], x["beta"], x.get("g"), backend="triton",
                                          chunk_size=chunk_size, config=config)[0]
    g = x.get("g_head", x.get("g"))
    return lambda: kernels.linear_attention(x["q"], x["k"], x["v"], g, backend="triton", chunk_size=chunk_size,
                                            config=config)[0]


def sweep_configs(op):
    """The candidates of benchmarks/linear_h200.py (one kernel family varied at a time), for --sweep."""
    from linear_h200 import OP_GROUP, candidates
    return [(64, c) for _, c in candidates(OP_GROUP[op])]


def compile_once(fn, leaves, label: str) -> None:
    """Run ``fn`` once forward+backward and once forward, so that its kernels are compiled (and
    fla's autotuned) before timing; a failure is printed with ``label``, not raised (fla refuses
    some gated kernels on Hopper with Triton < 3.7.1)."""
    try:
        o = fn()
        torch.autograd.grad(o, leaves, torch.randn_like(o))
        with torch.no_grad():
            fn()
    except Exception as e:
        print(f"warm {label}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)


def warm(who, ops, sweep, B, H, K, V):
    """Run each op once (fwd+bwd) at a short T so that Triton's disk cache (and fla's autotuner)
    hold the compiled kernels before timing; several of these run in parallel processes."""
    T = 1024
    for op in ops:
        x = make_inputs(op, B, T, H, K, V, "cuda")
        leaves = [t.requires_grad_(True) for n, t in x.items() if n != "g_head"]
        runs = [(64, None)] if sweep is None else [sweep_configs(op)[sweep]]
        for chunk, cfg in runs:
            fn = (ours_fn(op, x, cfg, chunk) if cfg else ours_fn(op, x)) if who == "ours" else fla_fn(op, x)
            compile_once(fn, leaves, f"{who} {op} {cfg}")
            if who != "ours":
                break
    torch.cuda.synchronize()


def run_sweep(report, ops, T, B, H, K, V, save):
    for op in ops:
        x = make_inputs(op, B, T, H, K, V, "cuda")
        for chunk, cfg in sweep_configs(op):
            fn = ours_fn(op, x, cfg, chunk)
            row = {"op": op, "T": T, "chunk": chunk, "config": cfg}
            for mode, bwd in (("fwd", False), ("fwdbwd", True)):
                ms, e = attempt(timed, fn, x, bwd)
                row[f"{mode}_ms"] = ms
                if e:
                    row[f"{mode}_error"] = e
            report["sweep"].append(row)
            print("sweep", json.dumps(row), flush=True)
        save()
        del x


def run_breakdown(report, ops, T, B, H, K, V, save, configs=None, device="cuda", timer=None):
    """Per-stage times of our kernels (forward and backward pieces), to see where time goes, along the
    paths the config selects (gate passes PREP_*, fused GLA output).
    configs: {"linear_attention": cfg, "delta_rule": cfg} (full configs; default: the defaults).
    device / timer (fn -> ms): for a CPU plumbing run under TRITON_INTERPRET=1 (fp32 inputs there)."""
    from triton.testing import do_bench

    from attnsearch.kernels import triton_linear as tlin
    cfgs = {op: {**tlin.default_config(group(op)), **((configs or {}).get(group(op)) or {})} for op in ops}
    BT = 64
    for op in ops:
        x = make_inputs(op, B, T, H, K, V, device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        cfg = cfgs[op]
        scale = K ** -0.5
        q, k, v = x["q"], x["k"], x["v"]
        g = x.get("g")
        if op == "retention":
            g = x["g_head"]  # [H], no gradient: the kernels' fixed-decay path (no pass over the gate)
        gate, fixed = tlin._gate_kind(g), tlin._fixed(g)
        pre_fwd, pre_bwd = tlin._use_prep(cfg, gate, False), tlin._use_prep(cfg, gate, True)
        pre_fwd, pre_bwd = pre_fwd and not fixed, pre_bwd and not fixed
        fused_out = gate == 2 and bool(cfg.get("GLA_OUT_FUSED", 0))
        if fixed:
            b, flag = g, None
        else:
            b, flag = tlin._chunk_cumsum(g, BT, flags=True) if gate == 2 else (tlin._chunk_cumsum(g, BT), None)
        do = torch.randn_like(v)
        stages = {"paths": {"prep_fwd": pre_fwd, "prep_bwd": pre_bwd, "gla_out_fused": fused_out, "fixed": fixed}}
        bench = timer or (lambda f: do_bench(f, warmup=10, rep=50, return_mode="median"))  # noqa: E731
        if g is not None and not fixed and not (pre_fwd and "delta" not in op):
            stages["cumsum"] = bench(lambda: tlin._chunk_cumsum(g, BT, flags=gate == 2))
        if "delta" in op:
            beta = x["beta"]
            if pre_fwd:
                w, u, _tm, kd, d = tlin._wy(k, v, beta, b, BT, False, keys=True)
                stages["wy_keys"] = bench(lambda: tlin._wy(k, v, beta, b, BT, False, keys=True))
                h, ht, vnew = tlin._state_fwd(kd, u, d, w, None, BT, cfg, gate, True, False, pre=True)
                stages["state_fwd_pre"] = bench(lambda: tlin._state_fwd(kd, u, d, w, None, BT, cfg, gate, True, False,
                                                                        pre=True))
            else:
                w, u, tm = tlin._wy(k, v, beta, b, BT, True)
                stages["wy"] = bench(lambda: tlin._wy(k, v, beta, b, BT, False))
                h, ht, vnew = tlin._state_fwd(k, u, b, w, None, BT, cfg, gate, True, False)
                stages["state_fwd"] = bench(lambda: tlin._state_fwd(k, u, b, w, None, BT, cfg, gate, True, False))
            stages["wy_store_tm"] = bench(lambda: tlin._wy(k, v, beta, b, BT, True, keys=pre_bwd))
            stages["out_fwd"] = bench(lambda: tlin._out_fwd(q, k, vnew, b, h, None, scale, BT, cfg, gate))
            stages["bwd_total"] = bench(lambda: tlin._delta_backward(q, k, v, beta, g, h, do, None, scale, BT, cfg,
                                                                     False))
        else:
            if pre_fwd:
                store_b = 1 if fused_out else 2
                b2, flag, kd, d = tlin._gate_prep(g, k, BT, True, store_b)
                b = b2 if b2 is not None else b
                stages["gate_prep_fwd"] = bench(lambda: tlin._gate_prep(g, k, BT, True, store_b))
                h, ht, _ = tlin._state_fwd(kd, v, d, None, None, BT, cfg, gate, False, False, pre=True)
                stages["state_fwd_pre"] = bench(lambda: tlin._state_fwd(kd, v, d, None, None, BT, cfg, gate, False,
                                                                        False, pre=True))
            else:
                h, ht, _ = tlin._state_fwd(k, v, b, None, None, BT, cfg, gate, False, False, fixed=fixed)
                stages["state_fwd"] = bench(lambda: tlin._state_fwd(k, v, b, None, None, BT, cfg, gate, False,
                                                                    False, fixed=fixed))
            att = tlin._gla_intra(q, k, b, flag, BT) if gate == 2 else None
            if gate == 2:
                stages["gla_intra"] = bench(lambda: tlin._gla_intra(q, k, b, flag, BT))
                stages["gla_safe_chunks"] = flag.float().mean().item()
            src = g if fused_out else b
            stages["gla_out_fused" if fused_out else "out_fwd"] = bench(
                lambda: tlin._out_fwd(q, k, v, src, h, att, scale, BT, cfg, gate, flag, fixed=fixed))
            if pre_bwd:
                _b, _f, qd, d = tlin._gate_prep(g, q, BT, False, 2)
                stages["gate_prep_bwd"] = bench(lambda: tlin._gate_prep(g, q, BT, False, 2))
                stages["state_bwd_pre"] = bench(lambda: tlin._state_bwd(qd, k, None, d, do, None, None, scale, BT, cfg,
                                                                        gate, False, False, pre=True))
                del qd
            else:
                stages["state_bwd"] = bench(lambda: tlin._state_bwd(q, k, None, b, do, None, None, scale, BT, cfg,
                                                                    gate, False, False, fixed=fixed))
            stages["bwd_total"] = bench(lambda: tlin._linear_backward(q, k, v, g, h, do, None, scale, BT, cfg,
                                                                      False))
        report["breakdown"].append({"op": op, "T": T, "config": cfg, "ms": stages})
        print("breakdown", op, json.dumps({k2: (round(v2, 4) if isinstance(v2, float) else v2)
                                           for k2, v2 in stages.items()}), flush=True)
        save()
        del x


@contextlib.contextmanager
def grads_on(x):
    """The float inputs of ``x`` (every tensor but the fixed ``g_head``) with requires_grad set
    for the block, reset after it."""
    leaves = [t for n, t in x.items() if n != "g_head"]
    for t in leaves:
        t.requires_grad_(True)
    try:
        yield leaves
    finally:
        for t in leaves:
            t.requires_grad_(False)


def kernel_profile(fn, x, iters=5, device="cuda", top=30):
    """GPU time per kernel name (ms per fwd+bwd call, torch.profiler over `iters` calls after one warm call),
    the largest first: which kernels the time of one op goes to (ours or fla's). device="cpu" profiles
    CPU ops instead (plumbing check only)."""
    from torch.profiler import ProfilerActivity, profile
    with grads_on(x) as leaves:
        out = fn()
        do = torch.randn_like(out)
        torch.autograd.grad(out, leaves, do)
        del out
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        sync()
        activity = ProfilerActivity.CUDA if device == "cuda" else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            for _ in range(iters):
                o = fn()
                torch.autograd.grad(o, leaves, do)
            sync()
    times = {}
    for e in prof.key_averages():
        us = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
              if device == "cuda" else e.self_cpu_time_total)
        if us:
            times[e.key] = times.get(e.key, 0.0) + us / 1e3 / iters
    ranked = sorted(times.items(), key=lambda kv: -kv[1])
    return {"total_ms": sum(times.values()), "kernels_ms": dict(ranked[:top])}


def fla_fn(op, x):
    mod, name, _ = OPS[op]
    fn = getattr(__import__(mod, fromlist=[name]), name)
    q, k, v = x["q"], x["k"], x["v"]
    if op == "linear":
        return lambda: fn(q, k, v, normalize=False)[0]
    if op == "retention":
        return lambda: fn(q, k, v)[0]
    if op in ("mamba2", "gla"):
        return lambda: fn(q, k, v, x["g"])[0]
    if op == "delta":
        return lambda: fn(q, k, v, x["beta"])[0]
    return lambda: fn(q, k, v, x["g"], x["beta"])[0]


def sdpa_fn(x):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run():
        q, k, v = (t.transpose(1, 2) for t in (x["q"], x["k"], x["v"]))  # [B, H, T, D] views
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def timed(fn, x, backward, warmup=25, rep=100):
    """Median ms of fwd (no grad) or fwd+bwd (grads of every float input)."""
    from triton.testing import do_bench
    if not backward:
        def run():
            with torch.no_grad():
                fn()
        return do_bench(run, warmup=warmup, rep=rep, return_mode="median")
    with grads_on(x) as leaves:
        out = fn()
        do = torch.randn_like(out)

        def run():
            o = fn()
            torch.autograd.grad(o, leaves, do)
        return do_bench(run, warmup=warmup, rep=rep, return_mode="median")


def peak_mem_mb(fn, x):
    with grads_on(x) as leaves:
        out = fn()
        do = torch.randn_like(out)
        del out
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        o = fn()
        torch.autograd.grad(o, leaves, do)
        del o
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def cpu_timed(fn, x, backward) -> float:
    """Milliseconds of one call on the CPU (``--smoke`` / dry runs: they exercise the plumbing
    only; interpreter times mean nothing)."""
    t0 = time.perf_counter()
    if backward:
        with grads_on(x) as leaves:
            o = fn()
            torch.autograd.grad(o, leaves, torch.randn_like(o))
    else:
        with torch.no_grad():
            fn()
    return (time.perf_counter() - t0) * 1e3


def time_row(row: dict, makers, op, x, timed_fn, tokens: int, floor_ms: float, rounds: int = 1) -> dict:
    """Time fwd and fwd+bwd for each (who, make) in ``makers`` into ``row``, then the ratios to
    fla, our tokens/s and our forward against the memory floor.

    rounds > 1: each mode is timed in that many rounds that alternate between the makers (ours, fla,
    ours, fla, ...), so that a drift of clocks or temperature during the run falls on both sides of a
    ratio; the row keeps the median over the rounds and the rounds themselves (``*_rounds_ms``). Give
    ``timed_fn`` 1/rounds of the repetitions to keep the time of a row."""
    fns = {who: attempt(make, op, x) for who, make in makers}
    for mode, bwd in (("fwd", False), ("fwdbwd", True)):
        times = {who: [] for who in fns}
        errors = {who: err for who, (_fn, err) in fns.items() if err}
        for _ in range(rounds):
            for who, (fn, _err) in fns.items():
                if who in errors:
                    continue
                ms, e = attempt(timed_fn, fn, x, bwd)
                if e:
                    errors[who] = e
                else:
                    times[who].append(ms)
        for who in fns:
            row[f"{who}_{mode}_ms"] = None if who in errors else statistics.median(times[who])
            if who in errors:
                row[f"{who}_{mode}_error"] = errors[who]
            elif rounds > 1:
                row[f"{who}_{mode}_rounds_ms"] = [round(t, 4) for t in times[who]]
    for mode in ("fwd", "fwdbwd"):
        o, f = row.get(f"ours_{mode}_ms"), row.get(f"fla_{mode}_ms")
        row[f"ratio_{mode}_vs_fla"] = o / f if o and f else None
        row[f"ours_{mode}_tok_per_s"] = tokens / (o * 1e-3) if o else None
    if row.get("ours_fwd_ms"):
        row["ours_fwd_vs_floor"] = row["ours_fwd_ms"] / floor_ms
    return row


def ours_with(configs):
    """ours_fn with a config per op group ({"linear_attention": {...}, "delta_rule": {...}}, over the defaults)."""
    if not configs:
        return ours_fn

    def make(op, x):
        return ours_fn(op, x, configs.get(group(op)) or None)
    return make


def attempt(fn, *args):
    try:
        return fn(*args), None
    except Exception as e:  # fla refuses its gated kernels on Hopper with Triton < 3.7.1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--T", default="8192,32768")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--no-fla", action="store_true")
    ap.add_argument("--no-sdpa", action="store_true", help="skip the cuDNN SDPA rows")
    ap.add_argument("--warm", choices=("ours", "fla"), help="only compile (run once at T=1024) and exit")
    ap.add_argument("--sweep", action="store_true", help="also time a few configs of ours at max T")
    ap.add_argument("--sweep-index", type=int, help="with --warm: compile only this sweep config")
    ap.add_argument("--breakdown", action="store_true", help="also time our kernels stage by stage at max T")
    ap.add_argument("--skip-main", action="store_true", help="skip the main comparison")
    ap.add_argument("--configs", help="JSON file of our configs over the defaults, per op group "
                    "({\"linear_attention\": {...}, \"delta_rule\": {...}}): the table times these")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds alternating ours / fla per timing, each 1/rounds of the repetitions (median kept)")
    args = ap.parse_args()
    B, H, K = args.B, args.H, args.D
    V = K
    Ts = [int(t) for t in args.T.split(",")]
    ops = args.ops.split(",")
    if args.warm:
        warm(args.warm, ops, args.sweep_index, B, H, K, V)
        return
    import triton
    configs = {}
    if args.configs:
        with open(args.configs) as f:
            configs = json.load(f)
    ours = ours_with(configs)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "configs_over_defaults": configs,
              "shape": {"B": B, "H": H, "K": K, "V": V, "dtype": "bfloat16"}, "rows": [], "memory": [],
              "sweep": [], "breakdown": []}
    try:
        import fla
        report["fla"] = getattr(fla, "__version__", "?")
    except ImportError:
        report["fla"] = None
        args.no_fla = True

    def save():
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)

    if args.skip_main:
        Ts_main = []
    else:
        Ts_main = Ts
    for T in Ts_main:
        floor_ms = (3 * B * T * H * K + B * T * H * V) * 2 / HBM_BYTES_PER_S * 1e3
        for op in ops:
            x = make_inputs(op, B, T, H, K, V, "cuda")
            row = {"op": op, "what": OPS[op][2], "T": T, "floor_fwd_ms": floor_ms}
            t0 = time.time()
            makers = [("ours", ours)] + ([] if args.no_fla else [("fla", fla_fn)])
            rounds = max(1, args.rounds)
            time_row(row, makers, op, x, lambda fn, x, bwd: timed(fn, x, bwd, rep=max(20, 100 // rounds)),
                     B * T, floor_ms, rounds=rounds)
            row["seconds"] = round(time.time() - t0, 1)
            report["rows"].append(row)
            save()
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
            del x
        if args.no_sdpa:
            continue
        x = make_inputs("linear", B, T, H, K, V, "cuda")
        row = {"op": "sdpa_cudnn_causal", "what": "cuDNN SDPA, full causal softmax", "T": T, "floor_fwd_ms": floor_ms}
        fn = sdpa_fn(x)
        for mode, bwd in (("fwd", False), ("fwdbwd", True)):
            ms, e = attempt(timed, fn, x, bwd)
            row[f"ours_{mode}_ms"] = ms
            if e:
                row[f"ours_{mode}_error"] = e
        report["rows"].append(row)
        save()
        del x
    # peak memory of fwd+bwd at the largest T
    T = max(Ts)
    for op in (ops if Ts_main else []):
        x = make_inputs(op, B, T, H, K, V, "cuda")
        mem = {"op": op, "T": T}
        for who, make in (("ours", ours), ("fla", None if args.no_fla else fla_fn)):
            if make is None:
                continue
            fn, err = attempt(make, op, x)
            mb, e = (None, err) if err else attempt(peak_mem_mb, fn, x)
            mem[f"{who}_peak_mb"] = mb
            if e:
                mem[f"{who}_error"] = e
        mem["inputs_mb"] = sum(t.numel() * t.element_size() for t in x.values()) / 2**20
        report["memory"].append(mem)
        save()
        del x
    print_table(report)
    if args.breakdown:
        run_breakdown(report, ops, T, B, H, K, V, save, configs=configs)
    if args.sweep:
        run_sweep(report, ops, T, B, H, K, V, save)


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def print_table(report):
    s = report["shape"]
    print(f"\n{report['device']}  torch {report['torch']}  triton {report['triton']}  fla {report['fla']}  "
          f"bf16 B={s['B']} H={s['H']} K=V={s['K']}")
    print(f"{'op':18s} {'T':>6s} {'ours fwd':>9s} {'fla fwd':>9s} {'ratio':>6s} {'ours f+b':>9s} {'fla f+b':>9s} "
          f"{'ratio':>6s} {'fwd/floor':>9s} {'Mtok/s f+b':>10s}")
    for r in report["rows"]:
        tps = r.get("ours_fwdbwd_tok_per_s")
        print(f"{r['op']:18s} {r['T']:6d} {_fmt(r.get('ours_fwd_ms')):>9s} {_fmt(r.get('fla_fwd_ms')):>9s} "
              f"{_fmt(r.get('ratio_fwd_vs_fla'), '.2f'):>6s} {_fmt(r.get('ours_fwdbwd_ms')):>9s} "
              f"{_fmt(r.get('fla_fwdbwd_ms')):>9s} {_fmt(r.get('ratio_fwdbwd_vs_fla'), '.2f'):>6s} "
              f"{_fmt(r.get('ours_fwd_vs_floor'), '.2f'):>9s} {_fmt(tps and tps / 1e6, '.1f'):>10s}")
        for key in ("fla_fwd_error", "fla_fwdbwd_error", "ours_fwd_error", "ours_fwdbwd_error"):
            if r.get(key):
                print(f"{'':18s} {key}: {r[key][:110]}")
    for m in report["memory"]:
        print(f"peak fwd+bwd {m['op']:12s} T={m['T']}: ours {_fmt(m.get('ours_peak_mb'), '.0f')} MB, "
              f"fla {_fmt(m.get('fla_peak_mb'), '.0f')} MB (inputs {m['inputs_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
