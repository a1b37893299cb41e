"""Gradient check of the Triton linear-attention and delta-rule kernels against the float64 recurrence.

Meant for the GPU (the compiler there is the one that must be right; fla 0.6 refuses its gated
kernels on Hopper with Triton < 3.7.1 because they come out wrong), also runs on CPU under
TRITON_INTERPRET=1 with --small.

For every gate kind of linear attention (None, [H], [B, T, H], [B, T, H, K]) and the delta rule
(ungated, [H], [B, T, H]), at mild and at strong decay (g down to -20), with an initial state,
T not a multiple of the chunk, it compares o, the final state and the gradients of every input
(q, k, v, g, beta, initial_state) with the token-by-token float64 reference, as
||ours - ref|| / ||ref||. float32 inputs must agree to 1e-4 (exact fp32 products on the GPU),
bfloat16 inputs to 3e-2.

  python benchmarks/linear_gradcheck.py [out.json] [--small] [--bf16-only | --fp32-only]
  python benchmarks/linear_gradcheck.py out.json --bench-shape [--only linear:BTHK,delta:none]
         [--configs configs.json]

--bench-shape checks the benchmark's head size (K=V=128, chunk 64) in fp32 and bf16 with mild,
strong (-20) and, for the per-channel gate, mixed decay (chunks on both sides of GLA_SAFE_SPAN);
--configs gives the kernel config per op ({"linear_attention": {...}, "delta_rule": {...}}), so that
tuned configs are checked with the compiler that will run them. --only runs a subset of op:gate cases
(one process per subset compiles in parallel).
"""
from __future__ import annotations

import json
import sys
import time

import torch

from attnsearch import kernels
from attnsearch.kernels import delta_rule_ref, linear_attention_ref

TOL = {torch.float32: 1e-4, torch.bfloat16: 3e-2}


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(op, gate, B, T, H, K, V, dtype, device, gmin, seed):
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    q, k, v = rnd(B, T, H, K), rnd(B, T, H, K), rnd(B, T, H, V)
    if op == "delta":
        k = torch.nn.functional.normalize(k, dim=-1)  # the delta rule's usual key normalisation
    beta = torch.rand(B, T, H, generator=gen)
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    g = {"none": None, "H": u(H) * gmin, "Hfixed": u(H) * gmin, "BTH": u(B, T, H) * gmin,
         "BTHK": u(B, T, H, K) * gmin}[gate]
    h0 = rnd(B, H, K, V) * 0.5
    named = {"q": q, "k": k, "v": v, "beta": beta if op == "delta" else None, "g": g, "h0": h0}
    return {n: (x.to(device=device, dtype=dtype) if n != "h0" else x.to(device)) for n, x in named.items()
            if x is not None}


def check(op, gate, B, T, H, K, V, chunk, dtype, device, gmin, seed=0, config=None):
    x = make_inputs(op, gate, B, T, H, K, V, dtype, device, gmin, seed)
    # "Hfixed": RetNet's fixed [H] decay with no gradient, the kernels' fixed-decay path
    ours = {n: t.clone().requires_grad_(n != "g" or gate != "Hfixed") for n, t in x.items()}
    ref = {n: t.detach().double().requires_grad_(ours[n].requires_grad) for n, t in x.items()}
    t0 = time.time()

    def ours_op(t):
        if op == "delta":
            return kernels.delta_rule(t["q"], t["k"], t["v"], t["beta"], t.get("g"), chunk_size=chunk,
                                      initial_state=t["h0"], output_final_state=True, backend="triton", config=config)
        return kernels.linear_attention(t["q"], t["k"], t["v"], t.get("g"), chunk_size=chunk, initial_state=t["h0"],
                                        output_final_state=True, backend="triton", config=config)

    o, s = ours_op(ours)
    if op == "delta":
        ro, rs = delta_rule_ref(ref["q"], ref["k"], ref["v"], ref["beta"], ref.get("g"), None, ref["h0"], True)
    else:
        ro, rs = linear_attention_ref(ref["q"], ref["k"], ref["v"], ref.get("g"), None, ref["h0"], True)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    wo = torch.randn(ro.shape, generator=gen).to(device)
    ws = torch.randn(rs.shape, generator=gen).to(device)
    ((o.float() * wo).sum() + (s.float() * ws).sum()).backward()
    ((ro * wo.double()).sum() + (rs * ws.double()).sum()).backward()
    errs = {"o": _rel(o, ro), "final_state": _rel(s, rs)}
    # the inference forward (no gradient wanted) may take other kernels (FUSED_FWD): check it too
    with torch.no_grad():
        o_ng, s_ng = ours_op(x)
    errs.update({"o_nograd": _rel(o_ng, ro.detach()), "final_state_nograd": _rel(s_ng, rs.detach())})
    grads = {n: t for n, t in ours.items() if t.requires_grad}
    for n in grads:
        errs["d" + n] = _rel(ours[n].grad, ref[n].grad)
    finite = (all(torch.isfinite(t.grad).all().item() for t in grads.values()) and torch.isfinite(o).all().item()
              and torch.isfinite(o_ng).all().item())
    worst = max(errs.values())
    ok = finite and worst <= TOL[dtype]
    return {"op": op, "gate": gate, "B": B, "T": T, "H": H, "K": K, "V": V, "chunk": chunk,
            "dtype": str(dtype).replace("torch.", ""), "gmin": gmin, "errors": errs, "worst": worst,
            "finite": finite, "ok": ok, "seconds": round(time.time() - t0, 2), "config": config}


def cases(small: bool):
    gates = {"linear": ("none", "H", "Hfixed", "BTH", "BTHK"), "delta": ("none", "H", "BTH")}
    if small:
        shapes = {torch.float32: [(1, 45, 2, 16, 32, 16), (1, 70, 1, 32, 16, 32)]}
        dtypes = (torch.float32,)
    else:
        shapes = {torch.float32: [(2, 300, 3, 64, 32, 64), (1, 333, 2, 128, 128, 32)],
                  torch.bfloat16: [(1, 333, 2, 128, 128, 64)]}
        dtypes = (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        for op, gs in gates.items():
            for gate in gs:
                for gmin in ((-1.0, -20.0) if gate != "none" else (0.0,)):
                    for shape in shapes[dtype]:
                        yield op, gate, *shape, dtype, gmin
    if not small:  # one long bf16 sequence per op at the benchmark's head size
        for op, gate in (("linear", "BTH"), ("linear", "BTHK"), ("delta", "BTH"), ("delta", "none")):
            yield op, gate, 1, 2048, 2, 128, 128, 64, torch.bfloat16, -0.5


def bench_shape_cases(K=128, V=128, T=333, long_T=2048):
    """The benchmark's head size and chunk, every gate kind, fp32 and bf16; mild, strong (-20) and,
    for the per-channel gate, mixed decay (gmin -2.5: chunks on both sides of GLA_SAFE_SPAN)."""
    gates = {"linear": ("none", "H", "Hfixed", "BTH", "BTHK"), "delta": ("none", "H", "BTH")}
    for op, gs in gates.items():
        for gate in gs:
            gmins = {"none": (0.0,), "BTHK": (-0.05, -2.5, -20.0)}.get(gate, (-1.0, -20.0))
            # bf16 first: the benchmark's dtype, which compiles in seconds where fp32 took up to 170 s on the H200
            # (the delta rule), so that a job cut by its time limit still reports it
            for dtype in (torch.bfloat16, torch.float32):
                for gmin in gmins:
                    yield op, gate, 1, T, 2, K, V, 64, dtype, gmin
            if (op, gate) in (("linear", "BTH"), ("linear", "Hfixed"), ("linear", "BTHK"), ("delta", "BTH"),
                              ("delta", "none")):
                yield op, gate, 1, long_T, 2, K, V, 64, torch.bfloat16, -0.5 if gate in ("BTH", "Hfixed") else -0.05


def _arg(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def main(argv):
    small = "--small" in argv
    bf16_only = "--bf16-only" in argv  # the benchmark's own kernels (bf16, K=V=128, chunk 64) only
    fp32_only = "--fp32-only" in argv  # (its compiles take minutes: a job of its own runs them beside the bf16 one)
    configs = {}
    if _arg(argv, "--configs"):
        with open(_arg(argv, "--configs")) as f:
            configs = json.load(f)
    only = set(_arg(argv, "--only").split(",")) if _arg(argv, "--only") else None
    values = {_arg(argv, n) for n in ("--configs", "--only")}
    paths = [a for a in argv if not a.startswith("--") and a not in values]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    todo = bench_shape_cases() if "--bench-shape" in argv else cases(small)
    def save(results):
        summary = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
                   "torch": torch.__version__, "triton": __import__("triton").__version__,
                   "all_ok": all(r["ok"] for r in results), "n": len(results), "results": results}
        if paths:  # rewritten after every case: a job killed by its time limit keeps the cases it finished
            with open(paths[0], "w") as f:
                json.dump(summary, f, indent=1)
        return summary

    for op, gate, B, T, H, K, V, chunk, dtype, gmin in todo:
        if (bf16_only and dtype != torch.bfloat16) or (fp32_only and dtype != torch.float32):
            continue
        if only is not None and f"{op}:{gate}" not in only:
            continue
        config = configs.get("delta_rule" if op == "delta" else "linear_attention")
        r = check(op, gate, B, T, H, K, V, chunk, dtype, device, gmin, config=config)
        results.append(r)
        flag = "ok " if r["ok"] else "BAD"
        print(f"{flag} {op:6s} g={gate:4s} gmin={gmin:5.1f} {r['dtype']:8s} B{B} T{T} H{H} K{K} V{V} C{chunk} "
              f"worst={r['worst']:.1e} " + " ".join(f"{k}={v:.0e}" for k, v in r["errors"].items()), flush=True)
        save(results)
    summary = save(results)
    print(f"gradcheck: {sum(r['ok'] for r in results)}/{len(results)} ok on {summary['device']}")
    return 0 if summary["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
