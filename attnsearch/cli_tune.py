"""CLI commands of the benchmark cache and the kernel auto-tuner (registered by cli.py):

    attnsearch cache list  [--storage URL] [--gpu NAME] [--op OP] [--json]
    attnsearch cache clear [--storage URL] [--gpu NAME] [--op OP] [--yes]
    attnsearch tune CONFIG.json [--seq-len L] [--batch-tokens N] [--storage URL] [--out tuned.json]
                                [--budget-s S] [--report search.json]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

cache_app = typer.Typer(help="The kernel benchmark cache in the database.", no_args_is_help=True)

StorageOpt = Annotated[Optional[str], typer.Option("--storage", help="Database URL (default: $ATTNSEARCH_STORAGE "
                                                                     "or sqlite:///attnsearch.db).")]
GpuOpt = Annotated[Optional[str], typer.Option("--gpu", help="Only entries of this GPU name.")]
OpOpt = Annotated[Optional[str], typer.Option("--op", help="Only entries of this op (e.g. mixer.train, "
                                                           "softmax_attention.train).")]


def _fail(message: str):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _open_cache(storage):
    from attnsearch.storage import StorageError
    from attnsearch.storage.bench_cache import BenchCache

    try:
        return BenchCache(storage)
    except StorageError as exc:
        _fail(str(exc))


def _short(value: dict, limit: int = 48) -> str:
    text = ",".join(f"{k}={v}" for k, v in sorted(value.items())) if value else "-"
    return text if len(text) <= limit else text[:limit - 1] + "…"


@cache_app.command("list")
def cache_list(storage: StorageOpt = None, gpu: GpuOpt = None, op: OpOpt = None,
               as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False):
    """List cached benchmark timings."""
    rows = _open_cache(storage).rows(gpu=gpu, op=op)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("benchmark cache is empty" + (" for this filter" if gpu or op else ""))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"benchmark cache: {len(rows)} entries")
    for name in ("gpu", "op", "mechanism", "shape", "dtype", "config", "median ms", "p20-p80 ms", "n"):
        table.add_column(name)
    for r in rows:
        mech = r["mechanism"].get("mechanism", "-") if r["mechanism"] else "-"
        params = r["mechanism"].get("params") if r["mechanism"] else None
        if params:
            mech += f"({_short(params, 32)})"
        table.add_row(r["gpu"], r["op"], mech, _short(r["shape"]), r["dtype"], _short(r["config"]),
                      f"{r['median_ms']:.4g}", f"{r['p20_ms']:.4g}-{r['p80_ms']:.4g}", str(r["count"]))
    Console(width=200).print(table)


@cache_app.command("clear")
def cache_clear(storage: StorageOpt = None, gpu: GpuOpt = None, op: OpOpt = None,
                yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False):
    """Delete cached timings (all, or those matching --gpu/--op)."""
    cache = _open_cache(storage)
    what = "all benchmark cache entries" if not (gpu or op) else \
        f"benchmark cache entries{f' of GPU {gpu!r}' if gpu else ''}{f' of op {op!r}' if op else ''}"
    if not yes and not typer.confirm(f"delete {what}?"):
        raise typer.Exit(code=1)
    n = cache.clear(gpu=gpu, op=op)
    typer.echo(f"deleted {n} entr{'y' if n == 1 else 'ies'}")


def tune_arch(*args, **kwargs):
    """The tuner on this machine's GPU (a module-level name so tests can swap in a fake)."""
    import torch

    from attnsearch.evaluators.tuner import tune_arch as real

    if not torch.cuda.is_available():
        raise ValueError("tune needs a CUDA GPU: kernel configs are tuned by timing the Triton kernels on it")
    return real(*args, **kwargs)


def tune(config: Annotated[Path, typer.Argument(help="Architecture JSON (an exported layout).")],
         seq_len: Annotated[Optional[int], typer.Option("--seq-len", help="Target context length "
                                                       "(default: the config's max_seq_len).")] = None,
         batch_tokens: Annotated[Optional[int], typer.Option("--batch-tokens", help="Tokens per training step "
                                                             "(default: one sequence).")] = None,
         storage: StorageOpt = None,
         out: Annotated[Optional[Path], typer.Option("--out", help="Write the tuned config JSON here "
                                                     "(default: CONFIG.tuned.json).")] = None,
         dtype: Annotated[str, typer.Option("--dtype", help="bf16, fp16 or fp32.")] = "bf16",
         trials: Annotated[int, typer.Option("--trials", help="Configs timed per op when the space is too "
                                             "large to time every one (Optuna TPE).")] = 24,
         budget_s: Annotated[Optional[float], typer.Option("--budget-s", help="Seconds of tuning per layer op at "
                                                           "most (the default config is always timed); "
                                                           "default: no limit.")] = None,
         report: Annotated[Optional[Path], typer.Option("--report", help="Also write every op's search "
                                                        "(configs timed, default and tuned times) as JSON.")] = None):
    """Tune every layer's kernel config on this machine's GPU; write the tuned config JSON."""
    from attnsearch.space.arch import ArchConfig, ConfigError

    try:
        arch = ArchConfig.from_json(config)
    except ConfigError as exc:
        _fail(str(exc))
    seq_len = seq_len or arch.max_seq_len
    if seq_len < 2 or seq_len > arch.max_seq_len:
        _fail(f"--seq-len must be in [2, {arch.max_seq_len}] (the config's max_seq_len), got {seq_len}")
    if batch_tokens is not None and batch_tokens < seq_len:
        _fail(f"--batch-tokens must be at least --seq-len ({seq_len}), got {batch_tokens}")
    if dtype not in ("bf16", "fp16", "fp32"):
        _fail(f"--dtype must be one of bf16, fp16, fp32, got {dtype!r}")
    if trials < 1:
        _fail(f"--trials must be a positive integer, got {trials}")
    if budget_s is not None and not budget_s > 0:
        _fail(f"--budget-s must be a positive number of seconds, got {budget_s}")
    cache = _open_cache(storage)
    try:
        result = tune_arch(arch, seq_len, batch_tokens, dtype, cache=cache, n_trials=trials,
                           time_budget_s=budget_s, progress=lambda line: typer.echo(line, err=True))
    except ValueError as exc:
        _fail(str(exc))
    out = out or config.with_name(config.stem + ".tuned.json")
    result["arch"].to_json(out)
    if report:
        report.write_text(json.dumps({"batch": result["batch"], "seq_len": result["seq_len"], "dtype": dtype,
                                      "budget_s": budget_s, "ops": result["ops"]}, indent=1, default=str))
    _print_tuning(result, cache)
    typer.echo(f"wrote {out}")


def _check_cell(check: dict) -> str:
    """The winner's check against the torch backend: output error, and gradient error where checked."""
    if not check:
        return "-"
    errors = f"out {check['rel_err']:.2g}"
    if "grad_rel_err" in check:
        errors += f", grad {check['grad_rel_err']:.2g}"
    return ("ok" if check.get("ok") else "FAILED") + f" ({errors})"


def _print_tuning(result: dict, cache) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"kernel tuning at batch {result['batch']} x {result['seq_len']} tokens")
    for name in ("layer kind", "op", "search", "timed", "skipped", "default ms", "tuned ms", "speedup", "check"):
        table.add_column(name)
    for sig, r in result["ops"].items():
        mech = json.loads(sig)["mechanism"]
        default = r["default_stats"]["median_ms"] if r["default_stats"] else None
        best = r["best_stats"]["median_ms"] if r["best_stats"] else None
        check = r.get("check") or {}
        table.add_row(mech, r["op"], f"{r['method']} / {r['space_size']}", str(r["n_timed"]), str(r["n_skipped"]),
                      f"{default:.4g}" if default else "-", f"{best:.4g}" if best else "-",
                      f"x{r['speedup']:.2f}" if r.get("speedup") else "-",
                      _check_cell(check))
    Console(width=200).print(table)
    typer.echo(f"benchmark cache: {cache.hits} hits, {cache.misses} misses")


def register(app: typer.Typer) -> None:
    """Add ``cache list|clear`` and ``tune`` to the main app."""
    app.add_typer(cache_app, name="cache")
    app.command("tune")(tune)
