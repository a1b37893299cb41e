"""Time the chunkwise torch backend against the token-by-token reference recurrence (CPU).

    python benchmarks/chunked_vs_recurrent.py                      # T=2048, B=1, H=4, K=V=64, fp32
    python benchmarks/chunked_vs_recurrent.py --T 1024 --chunk-sizes 32 64 128 --out results.json

For linear attention (each gate kind) and the delta rule (without / with gate), forward and
forward+backward, it reports the median wall time of each path and the speed-up, prints a
table and writes the rows as JSON. Both paths run in the same process on the same inputs, so
the reference is the anchor of every row. Inputs follow the layers' ranges: k L2-normalised,
beta in (0, 1), log-gates in (-0.1, 0) (decay has no effect on speed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from attnsearch import kernels
from attnsearch.kernels import delta_rule_ref, linear_attention_ref

CASES = [  # (op, gate kind)
    ("linear", "none"), ("linear", "fixed"), ("linear", "scalar"), ("linear", "channel"),
    ("delta", "none"), ("delta", "scalar"),
]


def make_inputs(B, T, H, K, V, gate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    shape = {"none": None, "fixed": (H,), "scalar": (B, T, H), "channel": (B, T, H, K)}[gate]
    g = None if shape is None else -0.1 * torch.rand(*shape, generator=gen)
    return q, k, v, beta, g


def runner(op, path, inputs, chunk_size):
    q, k, v, beta, g = inputs
    if op == "linear" and path == "chunked":
        return lambda q, k, v, beta, g: kernels.linear_attention(q, k, v, g, chunk_size=chunk_size,
                                                                  backend="torch")[0]
    if op == "linear":
        return lambda q, k, v, beta, g: linear_attention_ref(q, k, v, g)[0]
    if path == "chunked":
        return lambda q, k, v, beta, g: kernels.delta_rule(q, k, v, beta, g, chunk_size=chunk_size,
                                                            backend="torch")[0]
    return lambda q, k, v, beta, g: delta_rule_ref(q, k, v, beta, g)[0]


def time_call(fn, inputs, backward, repeats):
    """Median seconds of `repeats` runs after one warm-up."""
    def once():
        if backward:
            leaves = [None if x is None else x.detach().requires_grad_(True) for x in inputs]
            fn(*leaves).sum().backward()
        else:
            with torch.no_grad():
                fn(*inputs)
    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--T", type=int, default=2048)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--V", type=int, default=64)
    ap.add_argument("--chunk-sizes", type=int, nargs="+", default=[64])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of the chunked path (median)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the reference (median)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default="chunked_vs_recurrent.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = []
    header = f"{'op':6} {'gate':8} {'pass':8} {'chunk':>5} {'chunked ms':>11} {'recurrent ms':>13} {'speed-up':>9}"
    print(f"B={args.B} T={args.T} H={args.H} K={args.K} V={args.V} fp32 CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {_load_average()}")
    print(header)
    print("-" * len(header))
    for op, gate in CASES:
        inputs = make_inputs(args.B, args.T, args.H, args.K, args.V, gate)
        for backward in (False, True):
            ref = time_call(runner(op, "recurrent", inputs, None), inputs, backward, args.ref_repeats)
            for chunk in args.chunk_sizes:
                fast = time_call(runner(op, "chunked", inputs, chunk), inputs, backward, args.repeats)
                row = {"op": op, "gate": gate, "pass": "fwd+bwd" if backward else "fwd", "chunk_size": chunk,
                       "chunked_ms": fast * 1e3, "recurrent_ms": ref * 1e3, "speedup": ref / fast}
                rows.append(row)
                print(f"{op:6} {gate:8} {row['pass']:8} {chunk:5d} {row['chunked_ms']:11.2f} "
                      f"{row['recurrent_ms']:13.2f} {row['speedup']:8.1f}x", flush=True)

    result = {"shape": {"B": args.B, "T": args.T, "H": args.H, "K": args.K, "V": args.V, "dtype": "float32"},
              "device": "cpu", "cpu": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "load_average_1min": _load_average(), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
