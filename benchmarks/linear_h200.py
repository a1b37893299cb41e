"""One GPU call for the Triton linear-attention / delta-rule kernels: tune, check, compare, in one run.

  python benchmarks/linear_h200.py OUTDIR [--jobs 14] [--dry]

1. compile in parallel processes: every sweep candidate of ours, and fla's ops (its autotuner) at
   the benchmark shapes;
2. sweep (T=32768, bf16, B=2, H=16, K=V=128, chunk 64): candidates vary ONE kernel family at a
   time around the current default (triton_linear.FAMILIES: scans, forward output, backward), so
   each family's winner can be combined with the others' without compiling anything new;
   winner per family = lowest mean time relative to the default over the ops sharing the config
   (linear, retention, mamba2, gla -> linear_attention; delta, gated_delta -> delta_rule);
3. gradient check of the chosen configs against the float64 recurrence (linear_gradcheck.py
   --bench-shape, one process per op:gate, in parallel);
4. comparison with fla and cuDNN SDPA at T=8192 and 32768 with the chosen configs, peak memory of
   fwd+bwd at T=32768, and a per-stage breakdown of ours; nothing else runs on the GPU meanwhile.

OUTDIR/h200.json holds everything (rewritten after each phase); the table is printed last.
--dry runs the whole flow on CPU under TRITON_INTERPRET=1 at toy sizes (no fla, no timing value).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GROUPS = {"linear_attention": ("linear", "retention", "mamba2", "gla"), "delta_rule": ("delta", "gated_delta")}
OP_GROUP = {op: grp for grp, ops in GROUPS.items() for op in ops}
GRADCHECK_CASES = ("linear:none", "linear:H", "linear:BTH", "linear:BTHK", "delta:none", "delta:H", "delta:BTH")

# family -> list of variations (only that family's keys) tried around the default
CANDIDATES = {
    "linear_attention": {
        "scan": [dict(BLOCK_K=64, BLOCK_V=64, num_warps=4, num_stages=3),
                 dict(BLOCK_K=32, BLOCK_V=64, num_warps=4, num_stages=3),
                 dict(BLOCK_K=64, BLOCK_V=32, num_warps=4, num_stages=3),
                 dict(BLOCK_K=32, BLOCK_V=32, num_warps=4, num_stages=2)],
        "out": [dict(OUT_BLOCK_K=64, OUT_BLOCK_V=64, out_num_warps=4, out_num_stages=3),
                dict(OUT_BLOCK_K=128, OUT_BLOCK_V=64, out_num_warps=4, out_num_stages=2),
                dict(OUT_BLOCK_K=128, OUT_BLOCK_V=64, out_num_warps=8, out_num_stages=2),
                dict(OUT_BLOCK_K=128, OUT_BLOCK_V=128, out_num_warps=8, out_num_stages=2)],
        "bwd": [dict(BWD_BLOCK_V=64, bwd_num_warps=8, bwd_num_stages=3),
                dict(BWD_BLOCK_V=32, bwd_num_warps=8, bwd_num_stages=2),
                dict(BWD_BLOCK_V=64, bwd_num_warps=4, bwd_num_stages=2),
                dict(BWD_BLOCK_V=128, bwd_num_warps=8, bwd_num_stages=2)],
    },
    "delta_rule": {
        "scan": [dict(BLOCK_V=32, num_warps=4, num_stages=3),
                 dict(BLOCK_V=64, num_warps=4, num_stages=2),
                 dict(BLOCK_V=16, num_warps=4, num_stages=3),
                 dict(BLOCK_V=32, num_warps=8, num_stages=2)],
        "out": [dict(OUT_BLOCK_K=64, OUT_BLOCK_V=32, out_num_warps=4, out_num_stages=3),
                dict(OUT_BLOCK_K=128, OUT_BLOCK_V=64, out_num_warps=4, out_num_stages=2),
                dict(OUT_BLOCK_K=128, OUT_BLOCK_V=64, out_num_warps=8, out_num_stages=2),
                dict(OUT_BLOCK_K=64, OUT_BLOCK_V=64, out_num_warps=4, out_num_stages=2)],
        "bwd": [dict(BWD_BLOCK_V=32, bwd_num_warps=8, bwd_num_stages=3),
                dict(BWD_BLOCK_V=64, bwd_num_warps=8, bwd_num_stages=2),
                dict(BWD_BLOCK_V=32, bwd_num_warps=4, bwd_num_stages=2),
                dict(BWD_BLOCK_V=16, bwd_num_warps=4, bwd_num_stages=2)],
    },
}


def default(group):
    from attnsearch.kernels import triton_linear
    return triton_linear.default_config(group)


def candidates(group):
    """[(family, config)]: the default first (family "default"), then one-family variations."""
    base = default(group)
    out = [("default", base)]
    for fam, variations in CANDIDATES[group].items():
        for var in variations[:1] if os.environ.get("LINEAR_H200_DRY") else variations:
            cfg = {**base, **var}
            if cfg != base:
                out.append((fam, cfg))
    return out


def combine(group, winners):
    """The default with each family's winning keys."""
    cfg = default(group)
    for fam_cfg in winners.values():
        cfg.update(fam_cfg)
    return cfg


def choose(group, rows):
    """Per family, the candidate with the lowest mean time relative to the default over the group's
    ops (forward for the output family, fwd+bwd for the backward family, their sum for the scans)."""
    from attnsearch.kernels import triton_linear
    metric = {"scan": ("fwd_ms", "fwdbwd_ms"), "out": ("fwd_ms",), "bwd": ("fwdbwd_ms",)}
    base = {r["op"]: r for r in rows if r["family"] == "default" and r["group"] == group}
    winners, scores = {}, {}
    for fam, keys in metric.items():
        best = (1.0, None)
        fam_rows = [r for r in rows if r["group"] == group and r["family"] in (fam, "default")]
        by_cfg = {}
        for r in fam_rows:
            by_cfg.setdefault(json.dumps(r["config"], sort_keys=True), []).append(r)
        for key, rs in by_cfg.items():
            rel = []
            for r in rs:
                b = base.get(r["op"])
                if not b or any(r.get(k) is None or b.get(k) is None for k in keys):
                    rel = None
                    break
                rel.append(sum(r[k] for k in keys) / sum(b[k] for k in keys))
            if not rel or len(rel) < len(base):
                continue
            score = sum(rel) / len(rel)
            scores[f"{fam} {key}"] = score
            if score < best[0]:
                best = (score, rs[0]["config"])
        if best[1] is not None:
            winners[fam] = {k: best[1][k] for k in triton_linear.FAMILIES[fam] if k in best[1]}
    return winners, scores


# ---------------------------------------------------------------------------------------------
# subprocess tasks
# ---------------------------------------------------------------------------------------------

def task_warm(spec):
    """Compile: run ours (given configs) or fla once, fwd+bwd and fwd, at the given shape."""
    import torch

    import linear as lb
    B, H, K, T = spec["B"], spec["H"], spec["K"], spec["T"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for op in spec["ops"]:
        x = lb.make_inputs(op, B, T, H, K, K, device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
        leaves = [t.requires_grad_(True) for n, t in x.items() if n != "g_head"]
        for cfg in spec.get("configs") or [None]:
            fn = lb.ours_fn(op, x, cfg) if spec["who"] == "ours" else lb.fla_fn(op, x)
            lb.compile_once(fn, leaves, f"{spec['who']} {op} {cfg}")
        del x
    if device == "cuda":
        torch.cuda.synchronize()


def run_parallel(tasks, jobs, timeout, log):
    """Run `python this.py --task JSON` for each task, `jobs` at a time; returns the exit codes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    pending, running, codes = list(tasks), [], {}
    t_end = time.time() + timeout
    with open(log, "a") as logf:
        while pending or running:
            while pending and len(running) < jobs:
                name, argv = pending.pop(0)
                p = subprocess.Popen([sys.executable] + argv, stdout=logf, stderr=subprocess.STDOUT, env=env)
                running.append((name, p))
            time.sleep(0.2)
            for name, p in list(running):
                if p.poll() is not None:
                    codes[name] = p.returncode
                    running.remove((name, p))
                elif time.time() > t_end:
                    p.kill()
                    codes[name] = "timeout"
                    running.remove((name, p))
    return codes


# ---------------------------------------------------------------------------------------------
# main flow
# ---------------------------------------------------------------------------------------------

def timer(dry):
    import linear as lb
    return lb.cpu_timed if dry else lb.timed    # the dry run only exercises the flow


def main():
    args = sys.argv[1:]
    if args and args[0] == "--task":
        task_warm(json.loads(args[1]))
        return 0
    dry = "--dry" in args
    jobs = int(args[args.index("--jobs") + 1]) if "--jobs" in args else 14
    outdir = [a for a in args if not a.startswith("--") and not a.isdigit()][0]
    os.makedirs(outdir, exist_ok=True)
    if dry:  # interpreter, one candidate per family (the subprocesses inherit both)
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["LINEAR_H200_DRY"] = "1"
    import torch

    import linear as lb
    from attnsearch.kernels import triton_linear
    shape = dict(B=1, H=2, K=32, Ts=[80, 160], sweep_T=160) if dry else dict(B=2, H=16, K=128, Ts=[8192, 32768],
                                                                              sweep_T=32768)
    B, H, K = shape["B"], shape["H"], shape["K"]
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    report = {"device": "cpu (dry)" if dry else torch.cuda.get_device_name(), "torch": torch.__version__,
              "triton": __import__("triton").__version__, "shape": {"B": B, "H": H, "K": K, "V": K,
                                                                   "dtype": str(dtype)}, "phases": {}}
    try:
        import fla
        report["fla"] = getattr(fla, "__version__", "?")
    except ImportError:
        report["fla"] = None
    path = os.path.join(outdir, "h200.json")
    log = os.path.join(outdir, "tasks.log")

    def save():
        with open(path, "w") as f:
            json.dump(report, f, indent=1)

    def phase(name, t0):
        report["phases"][name] = round(time.time() - t0, 1)
        print(f"[{time.strftime('%H:%M:%S')}] {name} done in {report['phases'][name]} s", flush=True)
        save()

    # 1. compile in parallel
    t0 = time.time()
    tasks = []
    for group, ops in GROUPS.items():
        cands = [c for _, c in candidates(group)]
        for op in ops:
            for i in range(0, len(cands), 7):
                spec = dict(who="ours", ops=[op], configs=cands[i:i + 7], B=1, H=2, K=K, T=256)
                tasks.append((f"ours {op} {i}", [__file__, "--task", json.dumps(spec)]))
    if report["fla"] and not dry:
        for op in GROUPS["linear_attention"] + GROUPS["delta_rule"]:
            spec = dict(who="fla", ops=[op], B=B, H=H, K=K, T=shape["Ts"][-1])
            tasks.insert(0, (f"fla {op}", [__file__, "--task", json.dumps(spec)]))
    report["compile_exit_codes"] = run_parallel(tasks, jobs, 600 if dry else 170, log)
    phase("compile", t0)

    # 2. sweep
    t0 = time.time()
    timed = timer(dry)
    sweep_timed = timed if dry else (lambda fn, x, bwd: lb.timed(fn, x, bwd, warmup=10, rep=40))
    rows = []
    T = shape["sweep_T"]
    for group, ops in GROUPS.items():
        for op in ops:
            x = lb.make_inputs(op, B, T, H, K, K, device, dtype=dtype)
            for fam, cfg in candidates(group):
                row = {"group": group, "op": op, "family": fam, "config": cfg, "T": T}
                for mode, bwd in (("fwd", False), ("fwdbwd", True)):
                    if (fam == "out" and bwd) or (fam == "bwd" and not bwd):
                        continue
                    row[f"{mode}_ms"], err = lb.attempt(sweep_timed, lb.ours_fn(op, x, cfg), x, bwd)
                    if err:
                        row[f"{mode}_error"] = err
                rows.append(row)
            del x
    report["sweep"] = rows
    chosen = {}
    for group in GROUPS:
        winners, scores = choose(group, rows)
        chosen[group] = combine(group, winners)
        report.setdefault("selection", {})[group] = {"winners": winners, "scores": scores, "config": chosen[group]}
    report["chosen"] = chosen
    phase("sweep", t0)
    print("chosen:", json.dumps(chosen), flush=True)

    # 3. gradient check of the chosen configs
    t0 = time.time()
    cfg_path = os.path.join(outdir, "chosen.json")
    with open(cfg_path, "w") as f:
        json.dump(chosen, f)
    gc = os.path.join(HERE, "linear_gradcheck.py")
    small = ["--small"] if dry else ["--bench-shape"]
    tasks = [(case, [gc, os.path.join(outdir, f"gc_{case.replace(':', '_')}.json"), *small, "--only", case,
                      "--configs", cfg_path]) for case in GRADCHECK_CASES]
    report["gradcheck_exit_codes"] = run_parallel(tasks, jobs, 600 if dry else 130, log)
    results = []
    for case in GRADCHECK_CASES:
        try:
            with open(os.path.join(outdir, f"gc_{case.replace(':', '_')}.json")) as f:
                results += json.load(f)["results"]
            os.remove(os.path.join(outdir, f"gc_{case.replace(':', '_')}.json"))
        except (OSError, ValueError, KeyError):
            results.append({"case": case, "ok": False, "error": "no result"})
    report["gradcheck"] = {"all_ok": all(r["ok"] for r in results), "n": len(results),
                           "worst": max((r.get("worst", float("nan")) for r in results if "worst" in r), default=None),
                           "results": results}
    phase("gradcheck", t0)
    print(f"gradcheck all_ok={report['gradcheck']['all_ok']} n={len(results)}", flush=True)

    # 4. comparison with fla and SDPA, memory, breakdown
    t0 = time.time()
    report["rows"], report["memory"] = [], []
    for T in shape["Ts"]:
        floor_ms = (3 * B * T * H * K + B * T * H * K) * 2 / lb.HBM_BYTES_PER_S * 1e3
        for op in GROUPS["linear_attention"] + GROUPS["delta_rule"]:
            x = lb.make_inputs(op, B, T, H, K, K, device, dtype=dtype)
            row = {"op": op, "what": lb.OPS[op][2], "T": T, "floor_fwd_ms": floor_ms, "config": chosen[OP_GROUP[op]]}
            makers = [("ours", lambda o, xx: lb.ours_fn(o, xx, chosen[OP_GROUP[o]]))]
            if report["fla"] and not dry:
                makers.append(("fla", lb.fla_fn))
            lb.time_row(row, makers, op, x, timed, B * T, floor_ms)
            report["rows"].append(row)
            save()
            del x
        if not dry:
            x = lb.make_inputs("linear", B, T, H, K, K, device, dtype=dtype)
            row = {"op": "sdpa_cudnn_causal", "what": "cuDNN SDPA, full causal softmax", "T": T, "floor_fwd_ms": floor_ms}
            for mode, bwd in (("fwd", False), ("fwdbwd", True)):
                row[f"ours_{mode}_ms"], e = lb.attempt(timed, lb.sdpa_fn(x), x, bwd)
                if e:
                    row[f"ours_{mode}_error"] = e
            report["rows"].append(row)
            del x
    if not dry:
        T = shape["Ts"][-1]
        for op in GROUPS["linear_attention"] + GROUPS["delta_rule"]:
            x = lb.make_inputs(op, B, T, H, K, K, device, dtype=dtype)
            mem = {"op": op, "T": T}
            for who, make in (("ours", lambda o, xx: lb.ours_fn(o, xx, chosen[OP_GROUP[o]])),
                              ("fla", lb.fla_fn if report["fla"] else None)):
                if make is None:
                    continue
                fn, err = lb.attempt(make, op, x)
                mb, e = (None, err) if err else lb.attempt(lb.peak_mem_mb, fn, x)
                mem[f"{who}_peak_mb"] = mb
                if e:
                    mem[f"{who}_error"] = e
            mem["inputs_mb"] = sum(t.numel() * t.element_size() for t in x.values()) / 2**20
            report["memory"].append(mem)
            del x
        save()
        report["breakdown"] = []
        try:
            lb.run_breakdown(report, GROUPS["linear_attention"] + GROUPS["delta_rule"], T, B, H, K, K, save,
                             configs=chosen)
        except Exception as e:
            report["breakdown_error"] = f"{type(e).__name__}: {e}"
    phase("compare", t0)
    lb.print_table(report)
    print("chosen configs:", json.dumps(chosen))
    print(f"gradcheck: all_ok={report['gradcheck']['all_ok']} n={report['gradcheck']['n']} "
          f"worst={report['gradcheck']['worst']}")
    print("phases (s):", report["phases"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
