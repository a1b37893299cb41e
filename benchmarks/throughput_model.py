"""Composed per-part throughput vs timing the whole HybridLM at the target shape (issue 8).

    python benchmarks/throughput_model.py OUT.json [--layout SGSQSGSF] [--seq-len 4096]
                                         [--batch-tokens 16384] [--tuned tune.json] [--storage URL]

At the target (bf16, d_model 1024, 8 heads of 128, vocab 32000) it

1. times every part (per-layer mixers, the dense rest of a block, the model ends) in the three
   phases through the benchmark cache and composes the model's step times;
2. times the whole model the same way: training (forward + cross-entropy + backward), prefill
   (forward filling a fresh cache) and one decode step with a cache filled to T - 1 tokens
   (captured in a CUDA graph and replayed, as the parts' decode steps are);
3. reports the relative error of each composed step time (goal: |error| <= 10% for training);
4. measures again to show the cache answering every key (hit rate), and the peak training
   memory beside the exact decode-state formula (and the bytes a filled cache really holds).

With ``--tuned tune.json`` (from tune_h200.py), the layers use the tuned kernel configs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from attnsearch.evaluators import microbench as mb  # noqa: E402
from attnsearch.models import DecodeCache, build_model  # noqa: E402
from attnsearch.space import ArchConfig  # noqa: E402
from attnsearch.storage.bench_cache import BenchCache  # noqa: E402

T0 = time.time()
PARAMS = {"sliding_window": {"window": 1024}}


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def whole_model_ms(arch, shape: mb.TargetShape, timer) -> dict:
    dtype = mb.torch_dtype(shape.dtype)
    torch.manual_seed(0)
    model = build_model(arch).to(device="cuda", dtype=dtype)
    B, T, V = shape.batch, shape.seq_len, arch.vocab_size
    tokens = torch.randint(0, V, (B, T), device="cuda")
    targets = torch.randint(0, V, (B, T), device="cuda")
    params = list(model.parameters())

    def train():
        for p in params:
            p.grad = None
        F.cross_entropy(model(tokens).float().view(-1, V), targets.view(-1)).backward()

    def prefill():
        with torch.no_grad():
            model(tokens, model.init_cache(B))

    with torch.no_grad():
        filled = model.init_cache(B)
        model(tokens[:, :T - 1], filled)
    nxt = tokens[:, T - 1]

    def decode():
        with torch.no_grad():
            model.step(nxt, DecodeCache([dict(layer) for layer in filled.layers], filled.pos))

    out = {}
    for name, fn in (("train", train), ("prefill", prefill), ("decode", decode)):
        fn()
        if name == "decode":                 # as the parts: one captured step, replayed
            fn = mb.captured(fn)
        out[name] = timer(fn).to_dict()
        log(f"whole model {name}: {out[name]['median_ms']:.3f} ms")
    del model, filled
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layout", default="SGSQSGSF")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--tuned", default=None, help="tune_h200.py JSON: use its tuned configs per mechanism")
    ap.add_argument("--storage", default=None)
    args = ap.parse_args()
    arch = ArchConfig.from_layout(args.layout, layer_params=PARAMS, d_model=args.d_model, n_heads=args.heads,
                                  head_dim=args.head_dim, vocab_size=32000, max_seq_len=args.seq_len)
    if args.tuned and os.path.exists(args.tuned):
        tuned = {r["mechanism"]: r["tuned_config"] for r in json.load(open(args.tuned))["ops"]
                 if r.get("tuned_config") and (r.get("check") or {}).get("ok")}
        arch = arch.with_layers([{**l.model_dump(), "kernel_config": tuned.get(l.mechanism)} for l in arch.layers])
    shape = mb.TargetShape.from_target(args.seq_len, args.batch_tokens, "bf16")
    env = mb.environment_info()
    timer = mb.default_timer()
    cache = BenchCache(args.storage)
    report = {"env": env, "layout": arch.layout_string(), "arch": arch.to_dict(), "shape": vars(shape)}

    def save():
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)

    comp = mb.measure_parts(arch, shape, cache=cache, timer=timer, environment=env)
    report["composed"] = comp.to_dict()
    report["cache_first_pass"] = {"hits": cache.hits, "misses": cache.misses}
    log(f"composed step ms: {comp.step_ms}")
    save()
    whole = whole_model_ms(arch, shape, timer)
    report["whole_ms"] = whole
    report["error"] = {p: mb.composition_error(comp.step_ms[p], whole[p]["median_ms"]) for p in mb.PHASES}
    report["whole_tokens_per_s"] = {p: (shape.batch if p == "decode" else shape.tokens) / (whole[p]["median_ms"] / 1e3)
                                    for p in mb.PHASES}
    log(f"composition error: {report['error']}")
    save()
    hits0, misses0 = cache.hits, cache.misses
    mb.measure_parts(arch, shape, cache=cache, timer=timer, environment=env)
    report["cache_second_pass"] = {"hits": cache.hits - hits0, "misses": cache.misses - misses0}
    save()
    report["memory"] = mb.measure_peak_memory(arch, shape)
    log(f"memory: {report['memory']}")
    save()
    log("done")


if __name__ == "__main__":
    main()
