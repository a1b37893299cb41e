"""Kernel auto-tuner: the fastest correct kernel config per layer op at the target shape.

For each distinct (op, mechanism, params) among an architecture's layers:

1. capture the op's real inputs by running the layer's mixer once at the target shape
   (queries, keys, values, gates, block lists exactly as the model would pass them);
2. search the Triton backend's config space (``kernels.tunables.config_space``; linear ops also
   search ``chunk_size``): every config when the space has at most ``exhaustive_limit`` points,
   otherwise Optuna TPE (single objective) for ``n_trials`` configs, the default always first;
3. skip invalid configs with their reason: ``ValueError`` from validation, and compile errors or
   out-of-resources on the first launch;
4. time forward + backward (training) of each valid config through the benchmark cache (a key
   already there is never timed again);
5. check the winner once against the torch backend: its output, and its input gradients on the
   first batch row (configs of the backward's kernels change only those); a winner that
   disagrees is dropped and the next fastest is checked.

Kernel configs do not change what a layer computes (up to rounding), so they are tuned by
timing, never by proxy training. ``tune_configs`` is the search alone, with an injectable
``run_factory`` and ``timer`` so tests drive it with fake kernels and a fake clock.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from attnsearch.storage.bench_cache import BenchKey, BenchStats, MemoryBenchCache, stats_from_samples

EXHAUSTIVE_LIMIT = 64
N_TRIALS = 24
MAX_ATTEMPTS_FACTOR = 4          # TPE: stop after this many asks per wanted valid config
LINEAR_CHUNKS = (16, 32, 64, 128)
CHECK_TOLERANCE = {"fp32": 2e-3, "bf16": 3e-2, "fp16": 1e-2}   # relative L2 error vs torch
# gradients sum over T (a gate's over every later step too): looser than the output's
GRAD_CHECK_TOLERANCE = {"fp32": 5e-3, "bf16": 6e-2, "fp16": 2e-2}
MAX_CHECKS = 3


# ----------------------------------------------------------------------------- the search

@dataclass
class Trial:
    config: dict
    stats: BenchStats | None = None
    cached: bool = False
    skipped: str | None = None          # why the config could not run


@dataclass
class TuneResult:
    op: str
    method: str                         # "exhaustive" | "tpe"
    space_size: int
    default_config: dict
    default_stats: BenchStats | None
    best_config: dict
    best_stats: BenchStats | None
    trials: list[Trial] = field(default_factory=list)
    check: dict | None = None           # {"config", "rel_err", "tolerance", "ok"} of the winner
    budget_exhausted: bool = False      # the time budget stopped the search early

    @property
    def skipped(self) -> list[Trial]:
        return [t for t in self.trials if t.skipped]

    @property
    def speedup(self) -> float | None:
        if not self.default_stats or not self.best_stats or self.best_stats.median_ms <= 0:
            return None
        return self.default_stats.median_ms / self.best_stats.median_ms

    def to_dict(self) -> dict:
        out = asdict(self)
        out["speedup"] = self.speedup
        out["n_timed"] = sum(1 for t in self.trials if t.stats is not None)
        out["n_skipped"] = len(self.skipped)
        return out


_FATAL_GPU = ("illegal memory access", "device-side assert", "unspecified launch failure", "misaligned address")


def _is_fatal_gpu_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(s in text for s in _FATAL_GPU)


def space_size(space: dict) -> int:
    return math.prod(len(v) for v in space.values()) if space else 1


def enumerate_configs(space: dict) -> list[dict]:
    keys = sorted(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def tune_configs(space: dict, default: dict, *, run_factory: Callable[[dict], Callable[[], None]],
                 timer: Callable[[Callable[[], None]], BenchStats],
                 validate: Callable[[dict], None] = lambda config: None,
                 cache=None, key_for: Callable[[dict], BenchKey] | None = None, op: str = "op",
                 exhaustive_limit: int = EXHAUSTIVE_LIMIT, n_trials: int = N_TRIALS, seed: int = 0,
                 time_budget_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> TuneResult:
    """Search ``space`` ({key: allowed values}) for the config with the lowest median time.

    ``time_budget_s`` stops launching new configs once spent (the default is always timed
    first); the result's ``budget_exhausted`` says so.

    ``run_factory(config)`` returns a callable that runs the op once with that config (it may
    raise: the config is skipped with the reason); ``timer(fn)`` times it. With ``cache`` and
    ``key_for(config) -> BenchKey`` a cached config is not timed again (its first launch is
    skipped too: it ran when it was timed).
    """
    if not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    cache = cache if cache is not None else MemoryBenchCache()
    size = space_size(space)
    default = {k: v for k, v in default.items() if k in space}
    trials: dict[str, Trial] = {}
    deadline = None if time_budget_s is None else clock() + time_budget_s
    out_of_time = []

    def evaluate(config: dict) -> Trial | None:
        name = repr(sorted(config.items()))
        if name in trials:
            return trials[name]
        if deadline is not None and trials and clock() >= deadline:
            out_of_time.append(True)
            return None
        trial = Trial(dict(config))
        trials[name] = trial
        try:
            validate(config)
        except ValueError as exc:
            trial.skipped = str(exc)
            return trial
        key = key_for(config) if key_for else None
        if key is not None:
            found = cache.lookup(key)
            if found is not None:
                trial.stats, trial.cached = found, True
                return trial
        try:
            fn = run_factory(config)
            fn()                                  # first launch: compiles, may run out of resources
            trial.stats = timer(fn)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:                  # noqa: BLE001 - any launch failure skips the config
            if _is_fatal_gpu_error(exc):
                # the process's GPU context is gone: nothing after this can run here; say which config
                raise RuntimeError(f"{op} config {config} faulted the GPU ({_one_line(exc)})") from exc
            trial.skipped = _one_line(exc)
            return trial
        if key is not None:
            cache.put(key, trial.stats)
        return trial

    if size <= exhaustive_limit:
        method = "exhaustive"
        configs = enumerate_configs(space)
        if default in configs:                    # time the default first: the baseline
            configs.remove(default)
            configs.insert(0, default)
        for config in configs:
            if evaluate(config) is None:
                break
    else:
        method = "tpe"
        _tpe(space, default, evaluate, n_trials, seed)
    default_trial = trials.get(repr(sorted(default.items())))
    timed = sorted((t for t in trials.values() if t.stats is not None), key=lambda t: t.stats.median_ms)
    best = timed[0] if timed else None
    return TuneResult(op=op, method=method, space_size=size, default_config=default,
                      default_stats=default_trial.stats if default_trial else None,
                      best_config=dict(best.config) if best else dict(default),
                      best_stats=best.stats if best else None, trials=list(trials.values()),
                      budget_exhausted=bool(out_of_time))


# The keys that matter, a few values each, one kernel family at a time (the forward, the
# backward's kernels, the state scans, the output pass): families are separate kernels whose
# times add up, so each is searched exhaustively with the others at their current best instead
# of sampling a product space of 10^7 to 10^9 points. Values outside an op's valid space are
# dropped at run time.
TUNING_FAMILIES = {
    "softmax_attention": [
        {"BLOCK_M": (64, 128), "BLOCK_N": (32, 64, 128), "num_warps": (4, 8), "num_stages": (2, 3),
         "heads_inner": (0, 1)},
        {"BLOCK_M_DKV": (32, 64), "BLOCK_N_DKV": (64, 128), "num_warps_dkv": (4, 8), "num_stages_dkv": (2, 3),
         "heads_inner_bwd": (0, 1)},
        {"BLOCK_M_DQ": (64, 128), "BLOCK_N_DQ": (32, 64), "num_warps_dq": (4, 8), "num_stages_dq": (2, 3)},
    ],
    "linear_attention": [
        {"chunk_size": (32, 64, 128), "BLOCK_K": (64, 128), "BLOCK_V": (32, 64), "num_warps": (4, 8),
         "num_stages": (2, 3)},
        {"OUT_BLOCK_K": (64, 128), "OUT_BLOCK_V": (32, 64, 128), "out_num_warps": (4, 8), "out_num_stages": (2, 3)},
        {"BWD_BLOCK_V": (32, 64), "bwd_num_warps": (4, 8), "bwd_num_stages": (2, 3)},
        {"SCAN_BWD_BLOCK_V": (0, 32, 64), "scan_bwd_num_warps": (0, 4, 8), "scan_bwd_num_stages": (0, 2, 3)},
        {"FUSED_FWD": (0, 2, 3), "FUSED_BLOCK_V": (32, 64), "fused_num_stages": (3, 4),
         "fused_gated_num_stages": (0, 3)},
        {"HEADS_FIRST": (0, 1)},
    ],
    "delta_rule": [
        {"chunk_size": (32, 64), "BLOCK_V": (16, 32, 64), "num_warps": (4, 8), "num_stages": (2, 3)},
        {"OUT_BLOCK_K": (64, 128), "OUT_BLOCK_V": (32, 64, 128), "out_num_warps": (4, 8), "out_num_stages": (2, 3)},
        {"BWD_BLOCK_V": (16, 32, 64), "bwd_num_warps": (4, 8), "gated_bwd_num_warps": (0, 8),
         "bwd_num_stages": (2, 3)},
        {"SCAN_BWD_BLOCK_V": (0, 16, 32, 64), "scan_bwd_num_warps": (0, 4, 8), "scan_bwd_num_stages": (0, 2, 3)},
        {"FUSED_FWD": (0, 2, 3), "FUSED_BLOCK_V": (32, 64), "fused_num_stages": (3, 4)},
    ],
}


# Opt-in variants of one mechanism's gate path in the Triton linear kernels, after the op's own families:
# fewer instructions on sm_90 but not (yet) the defaults, so they are measured where the user tunes. The fused
# forward's (triton_linear's FUSED_FOLD 3 - 5, FUSED_SCALE16) and the backward's (Mamba-2's DG_WEAK / DG_ONE_SUM /
# DG_PREFIX, the scalar gates' BWD_KDEC, the scans' SCAN_SCALE16, the backward gate pass's warps, GLA's GLA_BWD_SPLIT /
# GLA_BWD_RELOAD); the winner is checked against the PyTorch backend, output and gradients, like every tuned config.
_FUSED_GATE_VARIANTS = {"FUSED_FOLD": (2, 3, 4, 5), "FUSED_SCALE16": (0, 1)}
MECHANISM_FAMILIES = {
    "retnet": [_FUSED_GATE_VARIANTS, {"SCAN_SCALE16": (0, 1), "BWD_KDEC": (0, 1)}],
    # (the per-chunk backward's variants, then the backward scan's and its gate pass's: two kernels, two families)
    "mamba2": [_FUSED_GATE_VARIANTS,
               {"DG_WEAK": (0, 1, 2), "DG_ONE_SUM": (0, 1), "BWD_KDEC": (0, 1), "DG_PREFIX": (0, 1)},
               {"SCAN_SCALE16": (0, 1), "prep_bwd_num_warps": (0, 2, 8)}],
    "gated_deltanet": [_FUSED_GATE_VARIANTS],
    "gla": [{"GLA_BWD_SPLIT": (0, 1), "GLA_BWD_RELOAD": (0, 1), "prep_bwd_num_warps": (0, 4, 8)}],
}


def op_families(op: str, fixed: dict | None = None, valid: dict | None = None,
                mechanism: str | None = None) -> list[dict]:
    """The op's tuning families (and the mechanism's, `MECHANISM_FAMILIES`), without the keys the search
    space pinned and without values the op does not accept (``valid``: its config space, chunk_size
    included)."""
    valid = valid if valid is not None else op_space(op)
    fixed = fixed or {}
    out = []
    for family in TUNING_FAMILIES.get(op, []) + MECHANISM_FAMILIES.get(mechanism, []):
        fam = {k: [v for v in values if v in valid.get(k, ())] for k, values in family.items()
               if k not in fixed and k in valid}
        fam = {k: v for k, v in fam.items() if v}
        if fam:
            out.append(fam)
    return out


def tune_families(families: list[dict], default: dict, *, time_budget_s: float | None = None,
                  clock: Callable[[], float] = time.monotonic, op: str = "op", **kwargs) -> TuneResult:
    """``tune_configs`` over one family at a time, the other keys at their best so far; the
    default is timed first. Same arguments as ``tune_configs``; one TuneResult for the whole."""
    best = dict(default)
    deadline = None if time_budget_s is None else clock() + time_budget_s
    parts: list[TuneResult] = []
    # one cache across families: a family's winner is the next family's starting point, not re-timed
    if kwargs.get("cache") is None:
        kwargs["cache"] = MemoryBenchCache()
    if kwargs.get("key_for") is None:
        kwargs["key_for"] = lambda config: BenchKey(gpu="local", versions={}, op=f"{op}.families", mechanism={},
                                                    shape={}, dtype="-", config=config)
    for family in families:
        left = None if deadline is None else max(0.0, deadline - clock())
        if left is not None and left <= 0 and parts:
            break
        # this family's values (the current best among them), every other key at its best
        space = {k: [v] for k, v in best.items()}
        for k, values in family.items():
            space[k] = list(values) if k not in best or best[k] in values else [best[k], *values]
        result = tune_configs(space, best, time_budget_s=left, clock=clock, op=op, **kwargs)
        parts.append(result)
        if result.best_stats is not None:
            best = dict(result.best_config)
    first = parts[0] if parts else None
    trials = {repr(sorted(t.config.items())): t for part in parts for t in part.trials}
    timed = sorted((t for t in trials.values() if t.stats is not None), key=lambda t: t.stats.median_ms)
    top = timed[0] if timed else None
    return TuneResult(op=op, method="families(" + ",".join(p.method for p in parts) + ")",
                      space_size=sum(p.space_size for p in parts), default_config=dict(default),
                      default_stats=first.default_stats if first else None,
                      best_config=dict(top.config) if top else dict(default),
                      best_stats=top.stats if top else None, trials=list(trials.values()),
                      budget_exhausted=any(p.budget_exhausted for p in parts) or len(parts) < len(families))


def _tpe(space: dict, default: dict, evaluate: Callable[[dict], "Trial | None"], n_trials: int, seed: int) -> None:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, max(1, n_trials // 2))))
    if set(default) == set(space):
        study.enqueue_trial(default)
    valid = 0
    for _ in range(n_trials * MAX_ATTEMPTS_FACTOR):
        if valid >= n_trials:
            break
        ot = study.ask()
        config = {k: ot.suggest_categorical(k, list(space[k])) for k in sorted(space)}
        trial = evaluate(config)
        if trial is None:                         # out of time
            study.tell(ot, state=TrialState.FAIL)
            break
        if trial.stats is None:
            study.tell(ot, state=TrialState.FAIL)
        else:
            valid += 1
            study.tell(ot, trial.stats.median_ms)


# ----------------------------------------------------------------------------- real ops

OP_NAMES = ("softmax_attention", "linear_attention", "delta_rule")


@dataclass
class CapturedOp:
    """One call of a kernel op as the mixer made it: positional args and keyword args."""
    op: str
    args: tuple
    kwargs: dict


@contextlib.contextmanager
def capture_ops():
    """Record every kernel op call made through ``attnsearch.kernels`` (calls still run)."""
    from attnsearch import kernels

    calls: list[CapturedOp] = []
    originals = {name: getattr(kernels, name) for name in OP_NAMES}

    def wrap(name, fn):
        def recorder(*args, **kwargs):
            calls.append(CapturedOp(name, args, dict(kwargs)))
            return fn(*args, **kwargs)
        return recorder

    for name, fn in originals.items():
        setattr(kernels, name, wrap(name, fn))
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(kernels, name, fn)


def op_space(op: str, backend: str = "triton") -> dict:
    """The config space searched for an op: the backend's tunables (+ chunk_size for linear ops)."""
    from attnsearch.kernels import tunables

    space = tunables.config_space(op, backend)
    if op != "softmax_attention":
        space["chunk_size"] = LINEAR_CHUNKS
    return space


def op_default(op: str, backend: str = "triton") -> dict:
    from attnsearch.kernels import tunables

    out = tunables.default_config(op, backend)
    if op != "softmax_attention":
        out["chunk_size"] = 64
    return out


def split_config(op: str, config: dict) -> tuple[dict, dict]:
    """(op keyword arguments, backend config) of a tuned config: chunk_size is an op argument."""
    config = dict(config)
    extra = {"chunk_size": config.pop("chunk_size")} if "chunk_size" in config else {}
    return extra, config


def validator(call: CapturedOp, backend: str = "triton") -> Callable[[dict], None]:
    from attnsearch.kernels import tunables

    q = call.args[0]
    ctx = {"head_dim": int(q.shape[-1])}
    if call.op == "softmax_attention":
        ctx["block_size"] = call.kwargs.get("block_size", 64) if (
            call.kwargs.get("block_indices") is not None) else None

    def check(config):
        extra, cfg = split_config(call.op, config)
        tunables.validate(call.op, backend, cfg, **ctx, **extra)
    return check


def _fresh_leaves(call: CapturedOp):
    """Copies of the call's tensors; float tensors that needed grad become leaves needing grad."""
    import torch

    def leaf(x):
        if torch.is_tensor(x) and x.is_floating_point():
            return x.detach().clone().requires_grad_(x.requires_grad)
        return x.detach().clone() if torch.is_tensor(x) else x

    args = tuple(leaf(a) for a in call.args)
    kwargs = {k: leaf(v) for k, v in call.kwargs.items()}
    return args, kwargs


def _output(out):
    return out[0] if isinstance(out, tuple) else out


def run_factory(call: CapturedOp, backward: bool = True, backend: str = "triton"):
    """config -> callable running the op once (forward, and backward when training)."""
    import torch

    from attnsearch import kernels

    fn = getattr(kernels, call.op)
    args, kwargs = _fresh_leaves(call)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("backend", "config")}
    leaves = [t for t in list(args) + list(kwargs.values()) if torch.is_tensor(t) and t.requires_grad]

    def make(config):
        extra, cfg = split_config(call.op, config)
        kw = {**kwargs, **extra}
        if not backward or not leaves:
            def forward():
                with torch.no_grad():
                    fn(*args, backend=backend, config=cfg, **kw)
            return forward
        out = _output(fn(*args, backend=backend, config=cfg, **kw))
        grad = torch.randn_like(out)

        def train():
            for t in leaves:
                t.grad = None
            _output(fn(*args, backend=backend, config=cfg, **kw)).backward(grad)
        return train
    return make


def batch_rows(call: CapturedOp, rows: int = 1) -> CapturedOp:
    """The call cut to its first ``rows`` batch rows: tensors of rank >= 3 led by the batch (q's first
    dimension: q, k, v, per-token gates, beta, the initial state, block lists) are cut; a per-head decay
    and non-tensors stay as they are."""
    import torch

    batch = next(a for a in call.args if torch.is_tensor(a)).shape[0]

    def cut(x):
        return x[:rows] if torch.is_tensor(x) and x.dim() >= 3 and x.shape[0] == batch else x

    return CapturedOp(call.op, tuple(cut(a) for a in call.args), {k: cut(v) for k, v in call.kwargs.items()})


def _relative_error(ours, ref) -> float:
    ours, ref = ours.double(), ref.double()
    return float((ours - ref).norm() / ref.norm().clamp_min(1e-12))


def _gradients(call: CapturedOp, backend: str, cfg: dict, extra: dict) -> dict:
    """{argument name: gradient} of the op on fresh copies of the call's inputs, for one fixed
    random output gradient (the same for every backend)."""
    import torch

    from attnsearch import kernels

    args, kwargs = _fresh_leaves(call)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("backend", "config")}
    named = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    leaves = [(name, t) for name, t in named if torch.is_tensor(t) and t.requires_grad]
    kw = {**kwargs, **extra, **({"config": cfg} if backend == "triton" else {})}
    out = _output(getattr(kernels, call.op)(*args, backend=backend, **kw))
    gen = torch.Generator(device=out.device).manual_seed(0)
    grad_out = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32).to(out.dtype)
    grads = torch.autograd.grad(out, [t for _n, t in leaves], grad_out, allow_unused=True)
    return {name: g for (name, _t), g in zip(leaves, grads) if g is not None}


def check_against_torch(call: CapturedOp, config: dict, dtype: str, gradients: bool = True) -> dict:
    """Relative L2 error of the triton op with ``config`` against the torch backend: its output on the
    whole call, and (``gradients``) every input gradient on the call's first batch row, which keeps the
    torch backend's memory small at long T. Configs that change only the backward's kernels are caught
    by the second."""
    import torch

    from attnsearch import kernels

    fn = getattr(kernels, call.op)
    args, kwargs = _fresh_leaves(call)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("backend", "config")}
    extra, cfg = split_config(call.op, config)
    with torch.no_grad():
        ours = _output(fn(*args, backend="triton", config=cfg, **{**kwargs, **extra}))
        ref = _output(fn(*args, backend="torch", **{**kwargs, **extra}))
        rel = _relative_error(ours, ref)
    del ours, ref, args, kwargs
    tol = CHECK_TOLERANCE.get(dtype, 3e-2)
    outcome = {"config": dict(config), "rel_err": rel, "tolerance": tol, "ok": bool(math.isfinite(rel) and rel <= tol)}
    if gradients and outcome["ok"]:
        row = batch_rows(call)
        ref_grads = _gradients(row, "torch", {}, extra)
        our_grads = _gradients(row, "triton", cfg, extra)
        missing = sorted(set(ref_grads) - set(our_grads))
        if missing:
            return {**outcome, "ok": False, "error": f"no gradient for {', '.join(missing)}"}
        errors = {name: _relative_error(our_grads[name], g) for name, g in ref_grads.items()}
        worst = max(errors, key=errors.get, default=None)
        grad_tol = GRAD_CHECK_TOLERANCE.get(dtype, 5e-2)
        grad_err = errors[worst] if worst else 0.0
        outcome.update(grad_rel_err=grad_err, grad_tolerance=grad_tol, worst_grad=worst,
                       ok=bool(math.isfinite(grad_err) and grad_err <= grad_tol))
    return outcome


def _failed_check(outcome: dict) -> str:
    if "error" in outcome:
        return f"check failed: {outcome['error']}"
    if "grad_rel_err" in outcome and not outcome["ok"]:
        return (f"wrong gradient ({outcome['worst_grad']}): relative error {outcome['grad_rel_err']:.3g} > "
                f"{outcome['grad_tolerance']:.3g}")
    return f"wrong output: relative error {outcome['rel_err']:.3g} > {outcome['tolerance']:.3g}"


def checked_winner(result: TuneResult, check: Callable[[dict], dict]) -> TuneResult:
    """Check the fastest configs in order until one agrees with the torch backend (at most
    MAX_CHECKS); none agreeing keeps the default config."""
    timed = sorted((t for t in result.trials if t.stats is not None), key=lambda t: t.stats.median_ms)
    for trial in timed[:MAX_CHECKS]:
        try:
            outcome = check(trial.config)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:                  # noqa: BLE001 - a check that cannot run is a failed check
            outcome = {"config": dict(trial.config), "rel_err": math.nan, "tolerance": math.nan, "ok": False,
                       "error": _one_line(exc)}
        result.check = outcome
        if outcome["ok"]:
            result.best_config, result.best_stats = dict(trial.config), trial.stats
            return result
        trial.skipped = _failed_check(outcome)
    result.best_config, result.best_stats = dict(result.default_config), result.default_stats
    return result


# ----------------------------------------------------------------------------- per layer

def do_bench_timer(warmup_ms: int = 25, rep_ms: int = 100) -> Callable[[Callable[[], None]], BenchStats]:
    """Median and spread of ``triton.testing.do_bench`` (it flushes L2 between runs)."""
    def timer(fn):
        import triton.testing

        samples = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return stats_from_samples(samples if isinstance(samples, (list, tuple)) else [samples])
    return timer


def layer_signature(layer) -> str:
    """Layers with the same mechanism, params and space-given kernel settings share one tuning."""
    from attnsearch.storage.bench_cache import canonical_json

    sig = {"mechanism": layer.mechanism, "params": layer.params}
    if layer.kernel_config:
        sig["kernel_config"] = layer.kernel_config
    return canonical_json(sig)


def capture_layer_op(arch, layer, batch: int, seq_len: int, dtype, device) -> CapturedOp:
    """Run the layer's mixer once at the target shape and return its kernel op call."""
    import torch

    from attnsearch.models import build_mixer

    torch.manual_seed(0)
    mixer = build_mixer(arch, layer, backend="auto").to(device=device, dtype=dtype)
    x = torch.randn(batch, seq_len, arch.d_model, device=device, dtype=dtype, requires_grad=True)
    with capture_ops() as calls:
        mixer(x)
    if len(calls) != 1:
        raise RuntimeError(f"{layer.mechanism}: expected one kernel op call per forward, saw {len(calls)}")
    return calls[0]


def tune_arch(arch, seq_len: int, batch_tokens: int | None = None, dtype: str = "bf16", *,
              cache=None, timer=None, device="cuda", exhaustive_limit: int = EXHAUSTIVE_LIMIT,
              n_trials: int = N_TRIALS, seed: int = 0, environment: dict | None = None,
              check: bool = True, progress: Callable[[str], None] | None = None,
              time_budget_s: float | None = None, known: dict | None = None) -> dict:
    """Tune every distinct layer op of ``arch`` on the GPU at (batch, seq_len).

    Kernel keys a layer already sets (fixed or searched in the space) stay as they are; only the
    rest is tuned. ``known`` maps layer signatures to configs chosen earlier (a study tunes each
    layer kind once): those layers take them without tuning.

    Returns {"arch": ArchConfig with tuned kernel_config per layer, "kernel_configs": [...],
    "ops": {signature: TuneResult dict}, "batch": B, "seq_len": T}.
    """
    import torch

    from attnsearch.space.catalogue import mechanism

    from .microbench import environment_info, torch_dtype

    if seq_len <= 0:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    tdtype = torch_dtype(dtype)
    batch = max(1, (batch_tokens or seq_len) // seq_len)
    env = environment or environment_info()
    cache = cache if cache is not None else MemoryBenchCache()
    timer = timer or do_bench_timer()
    by_signature: dict[str, dict] = {}
    configs = []
    known = dict(known or {})
    for layer in arch.layers:
        sig = layer_signature(layer)
        if sig in known:
            configs.append(dict(known[sig]))
            continue
        if sig not in by_signature:
            op = mechanism(layer.mechanism).op
            call = capture_layer_op(arch, layer, batch, seq_len, tdtype, device)
            shape = {"batch": batch, "seq_len": seq_len, "n_heads": arch.n_heads, "head_dim": arch.head_dim,
                     "v_head_dim": arch.v_head_dim}
            mech = {"mechanism": layer.mechanism, "params": layer.params}

            def key_for(config, op=op, mech=mech, shape=shape):
                return BenchKey(gpu=env["gpu"], versions=env["versions"], op=f"{op}.train",
                                mechanism=mech, shape=shape, dtype=dtype, config=config)

            fixed = dict(layer.kernel_config or {})
            default = {**op_default(op), **fixed}
            result = tune_families(op_families(op, fixed, mechanism=layer.mechanism), default,
                                   run_factory=run_factory(call),
                                   timer=timer, validate=validator(call), cache=cache, key_for=key_for, op=op,
                                   exhaustive_limit=exhaustive_limit, n_trials=n_trials, seed=seed,
                                   time_budget_s=time_budget_s)
            if check:
                result = checked_winner(result, lambda c, call=call: check_against_torch(call, c, dtype))
            by_signature[sig] = result.to_dict()
            del call
            torch.cuda.empty_cache()
            if progress:
                progress(f"{layer.mechanism}: {result.method} over {result.space_size} configs, "
                         f"speedup x{(result.speedup or float('nan')):.2f}")
        configs.append(dict(by_signature[sig]["best_config"]))
    tuned = arch.with_layers([{**layer.model_dump(), "kernel_config": cfg} for layer, cfg in zip(arch.layers, configs)])
    return {"arch": tuned, "kernel_configs": configs, "ops": by_signature, "batch": batch, "seq_len": seq_len}
