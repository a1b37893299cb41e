"""SearchSpace: the space file format and ``SearchSpace.suggest(trial) -> ArchConfig``.

A space file is YAML (read with the safe loader, so it never runs code) or JSON::

    target:                      # the model the search is for; costs are computed at this size
      d_model: 2048
      n_layers: 24
      n_heads: 16
      head_dim: 128              # optional: v_head_dim, mlp_ratio
      vocab_size: 32000
      context_len: 32768         # state bytes and throughput are measured at this context
      batch_tokens: 524288       # tokens per training step (throughput), default context_len
      dtype: bf16                # bf16 | fp16 | fp32
      gpu: H100                  # for the roofline estimate: H100, H200, A100, L40S, ...
    proxy: {...}                 # the small model that scores quality (evaluators.quality.ProxySpec)
    layout:
      mode: per_layer            # per_layer: a choice per layer; pattern: a period tiled over depth
      periods: [1, 2, 3, 4, 6, 8]  # pattern mode only
    mechanisms:                  # the allowed per-layer choices and their parameter choices
      full: {}
      sliding_window:
        window: [512, 1024, 4096]    # a list: searched among these
      longformer:
        window: {low: 128, high: 2048, log: true}   # a range: searched in it
        num_global_blocks: 1         # a scalar: fixed (a missing parameter: its default, fixed)
      gated_deltanet:
        kernel: {chunk_size: auto}   # kernel tunables: auto (default) | a value | a list
    constraints:
      min_full_layers: 1
      max_full_layers: 6
      max_state_bytes: 4.0e9     # whole model, per sequence, at target.context_len
      min_throughput: 1.0e5      # tokens/s, roofline estimate at the target
    objectives: [quality, throughput]          # or {name: direction}; state_bytes optional 3rd
    sampler: {name: tpe, seed: 0}              # tpe (default) | nsga2 | gp | random
    evaluation: {throughput: estimated, cpus_per_trial: 1, gpus_per_trial: 0.25, trial_timeout_s: 1800}
    # throughput: estimated | measured-cpu | measured (GPU microbenchmarks; then also
    # tune_kernels: true, tune_trials: 16, tune_budget_s: null for the auto kernel parameters)
    seed: 0

Kernel tunables (``chunk_size`` and the op backends' tile sizes) never change what the model
computes, so ``auto`` (the default) leaves them out of the sampler: they are tuned by
microbenchmark and cached, never spent on proxy training. A value fixes them, a list searches.

``suggest`` samples through Optuna's define-by-run API (parameter names such as
``L03.mechanism``, ``L03.sliding_window.window`` or, in pattern mode, ``period``,
``P1.mechanism``) and returns the ArchConfig at the *target* dims. A sample that breaks a
constraint raises :class:`Infeasible` carrying the constraint values, so the driver can record
them for the sampler without training anything. Every load error is one line naming the file,
the field and what is allowed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .arch import ArchConfig, LayerSpec
from .catalogue import MECHANISMS, ConfigError, OneLineError, ParamSpec, mechanism

LAYOUT_MODES = ("per_layer", "pattern")
SAMPLERS = ("tpe", "nsga2", "gp", "random")
THROUGHPUT_MODES = ("estimated", "measured-cpu", "measured")
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# objective name -> default direction; the metric of the same name is the value
OBJECTIVES = {"quality": "maximize", "throughput": "maximize", "state_bytes": "minimize"}
DEFAULT_OBJECTIVES = ("quality", "throughput")
DEFAULT_PERIODS = (1, 2, 3, 4, 6, 8)
BASELINES = ("transformer", "gemma3", "command_a", "jamba", "qwen3_next", "linear")
AUTO = "auto"


class SpaceError(OneLineError):
    """A space file problem: '<file>: <field>: <what is wrong> (allowed: ...)'."""


class Infeasible(Exception):
    """A sampled architecture breaks a constraint. ``constraints`` maps every constraint name to
    its value (> 0 violated, <= 0 satisfied), the form Optuna's samplers read."""

    def __init__(self, arch: ArchConfig, constraints: dict[str, float]):
        self.arch = arch
        self.constraints = constraints
        bad = ", ".join(f"{k} by {v:.3g}" for k, v in constraints.items() if v > 0)
        super().__init__(f"infeasible: violates {bad}")


# ----------------------------------------------------------------------------- parameter choices

@dataclass(frozen=True)
class Choice:
    """How one parameter is set: ``fixed`` value, ``choices`` (categorical) or a ``range``."""
    kind: str                              # "fixed" | "choices" | "range" | "auto"
    value: Any = None
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    is_int: bool = True

    def to_dict(self):
        if self.kind == "fixed":
            return self.value
        if self.kind == "auto":
            return AUTO
        if self.kind == "choices":
            return list(self.choices)
        out = {"low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out

    def corners(self) -> list:
        """The few values that bound what this choice can produce (for feasibility checks)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choices":
            return list(self.choices)
        if self.kind == "range":
            return [int(self.low) if self.is_int else self.low, int(self.high) if self.is_int else self.high]
        return []

    def contains(self, value) -> bool:
        if self.kind == "fixed":
            return value == self.value
        if self.kind == "choices":
            return value in self.choices
        if self.kind == "range":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                return False
            if not (self.low <= value <= self.high):
                return False
            if self.is_int and int(value) != value:
                return False
            if self.step is not None and abs(((value - self.low) / self.step) - round((value - self.low) / self.step)) > 1e-9:
                return False
            return True
        return False

    def sample(self, trial, name: str):
        if self.kind == "fixed":
            return self.value
        if self.kind == "choices":
            return trial.suggest_categorical(name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)


def _err(where: str, problem: str, allowed: str | None = None) -> SpaceError:
    return SpaceError(f"{where}: {problem}" + (f" (allowed: {allowed})" if allowed else ""))


def _parse_param_choice(spec: ParamSpec, raw, where: str) -> Choice:
    """A quality parameter's setting: scalar -> fixed, list -> choices, {low, high} -> range."""
    def check(value, at):
        try:
            return spec.check(value, at)
        except ConfigError as exc:
            raise SpaceError(str(exc)) from None

    if isinstance(raw, list):
        if not raw:
            raise _err(where, "empty list of choices", spec.allowed())
        values = [check(v, f"{where}[{i}]") for i, v in enumerate(raw)]
        if len(set(map(repr, values))) != len(values):
            raise _err(where, f"duplicate choices in {raw!r}")
        return Choice("choices", choices=tuple(values)) if len(values) > 1 else Choice("fixed", value=values[0])
    if isinstance(raw, dict):
        if spec.type == "choice":
            raise _err(where, "a range is not possible for a categorical parameter",
                       f"a value or a list of {list(spec.choices)}")
        unknown = set(raw) - {"low", "high", "log", "step"}
        if unknown:
            raise _err(where, f"unknown range key {sorted(unknown)[0]!r}", "low, high, log, step")
        if "low" not in raw or "high" not in raw:
            raise _err(where, "a range needs both low and high", spec.allowed())
        low, high = check(raw["low"], f"{where}.low"), check(raw["high"], f"{where}.high")
        if low > high:
            raise _err(where, f"low {low!r} is above high {high!r}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise _err(f"{where}.log", f"must be true or false, got {log!r}")
        step = raw.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
            raise _err(f"{where}.step", f"must be a positive number, got {step!r}")
        if step is not None and log:
            raise _err(where, "log and step cannot be combined")
        if spec.power_of_two:
            # a range over a power-of-two parameter means the powers of two inside it
            values = [2 ** e for e in range(int(math.log2(low)), int(math.log2(high)) + 1) if low <= 2 ** e <= high]
            return Choice("choices", choices=tuple(values)) if len(values) > 1 else Choice("fixed", value=values[0])
        if spec.type == "int" and step is not None and int(step) != step:
            raise _err(f"{where}.step", f"must be an integer for an integer parameter, got {step!r}")
        if low == high:
            return Choice("fixed", value=low)
        return Choice("range", low=low, high=high, log=log, step=step, is_int=spec.type == "int")
    if raw is None:
        raise _err(where, "missing value", spec.allowed())
    return Choice("fixed", value=check(raw, where))


def _kernel_keys(mech_name: str) -> dict[str, tuple | ParamSpec]:
    """Kernel tunables a mechanism accepts: catalogue ones (chunk_size) and its op's backend keys."""
    from attnsearch.kernels import tunables

    mech = mechanism(mech_name)
    keys: dict[str, tuple | ParamSpec] = dict(mech.tunable_params())
    for backend in ("torch", "triton"):
        try:
            space = tunables.config_space(mech.op, backend)
        except (ImportError, ValueError):    # a backend not built yet has no tunables to offer
            continue
        for key, values in space.items():
            keys.setdefault(key, tuple(values))
    return keys


def _parse_kernel_choice(allowed: tuple | ParamSpec, raw, where: str) -> Choice:
    if raw == AUTO or raw is None:
        return Choice("auto")
    if isinstance(allowed, ParamSpec):
        return _parse_param_choice(allowed, raw, where)
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise _err(where, "empty list of choices", f"auto, or values from {list(allowed)}")
    for i, v in enumerate(values):
        if v not in allowed:
            at = f"{where}[{i}]" if isinstance(raw, list) else where
            raise _err(at, f"{v!r} is not a valid value", f"auto, or values from {list(allowed)}")
    return Choice("choices", choices=tuple(values)) if len(values) > 1 else Choice("fixed", value=values[0])


@dataclass(frozen=True)
class MechanismChoice:
    name: str
    params: dict[str, Choice]
    kernel: dict[str, Choice]

    def to_dict(self) -> dict:
        out = {k: c.to_dict() for k, c in self.params.items()}
        if any(c.kind != "auto" for c in self.kernel.values()):
            out["kernel"] = {k: c.to_dict() for k, c in self.kernel.items()}
        return out

    def sample(self, trial, prefix: str) -> LayerSpec:
        params = {k: c.sample(trial, f"{prefix}.{self.name}.{k}") for k, c in self.params.items()}
        kernel = {k: c.sample(trial, f"{prefix}.{self.name}.kernel.{k}")
                  for k, c in self.kernel.items() if c.kind != "auto"}
        return LayerSpec(mechanism=self.name, params=params, kernel_config=kernel or None)

    def param_values_for(self, layer: LayerSpec, prefix: str) -> dict | None:
        """Optuna params that make ``sample`` reproduce ``layer``, or None if it does not fit."""
        out = {}
        for k, choice in self.params.items():
            value = layer.params.get(k)
            if not choice.contains(value):
                return None
            if choice.kind != "fixed":
                out[f"{prefix}.{self.name}.{k}"] = value
        for k, choice in self.kernel.items():
            if choice.kind in ("auto", "fixed"):
                continue
            given = (layer.kernel_config or {}).get(k)
            out[f"{prefix}.{self.name}.kernel.{k}"] = given if choice.contains(given) else choice.corners()[0]
        return out

    def corner_layers(self) -> list[LayerSpec]:
        """Layers at every combination of the extreme parameter values (feasibility bounds)."""
        names = list(self.params)
        grids = [self.params[n].corners() for n in names]
        return [LayerSpec(mechanism=self.name, params=dict(zip(names, combo)))
                for combo in itertools.product(*grids)]


# ----------------------------------------------------------------------------- the space

@dataclass(frozen=True)
class Target:
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    vocab_size: int
    context_len: int
    batch_tokens: int
    dtype: str = "bf16"
    gpu: str = "H100"
    v_head_dim: int | None = None
    mlp_ratio: float | None = None

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    def dims(self) -> dict:
        out = dict(d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                   head_dim=self.head_dim, vocab_size=self.vocab_size, max_seq_len=self.context_len)
        if self.v_head_dim is not None:
            out["v_head_dim"] = self.v_head_dim
        if self.mlp_ratio is not None:
            out["mlp_ratio"] = self.mlp_ratio
        return out

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Constraints:
    min_full_layers: int | None = None
    max_full_layers: int | None = None
    max_state_bytes: float | None = None
    min_throughput: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "tpe"
    seed: int | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSpec:
    throughput: str = "estimated"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.25
    trial_timeout_s: float | None = None
    tune_kernels: bool = True              # measured mode: tune the ``auto`` kernel parameters
    tune_trials: int = 16                  # configs per layer kind when the space is too big to try all
    tune_budget_s: float | None = None     # seconds of tuning per layer kind (None: no limit)


_TUNING_DEFAULTS = {"tune_kernels": True, "tune_trials": 16, "tune_budget_s": None}


@dataclass(frozen=True)
class SearchSpace:
    target: Target
    mechanisms: dict[str, MechanismChoice]
    layout_mode: str = "per_layer"
    periods: tuple[int, ...] = DEFAULT_PERIODS
    constraints: Constraints = Constraints()
    objectives: tuple[tuple[str, str], ...] = tuple((n, OBJECTIVES[n]) for n in DEFAULT_OBJECTIVES)
    sampler: SamplerSpec = SamplerSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    proxy: dict = field(default_factory=dict)
    seed: int = 0
    source: str = "<space>"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        path = Path(path)
        name = str(path)
        try:
            exists = path.is_file()
        except OSError as exc:                       # e.g. a file name too long
            raise SpaceError(f"{name[:200]}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
        if not exists:
            raise SpaceError(f"{name}: no such space file")
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SpaceError(f"{name}: cannot read the file ({exc.__class__.__name__})") from None
        return cls.from_text(text, source=name)

    @classmethod
    def from_text(cls, text: str, source: str = "<space>") -> "SearchSpace":
        try:
            data = yaml.safe_load(text)   # JSON is YAML too; the safe loader never runs code
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "malformed YAML"
            raise SpaceError(f"{source}: malformed YAML/JSON{where}: {problem}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data, source: str = "<space>") -> "SearchSpace":
        return _parse_space(data, source)

    def to_dict(self) -> dict:
        """The normalised space (what a study records and fingerprints)."""
        out = {
            "target": self.target.to_dict(),
            "proxy": self.proxy,
            "layout": {"mode": self.layout_mode, **({"periods": list(self.periods)}
                                                     if self.layout_mode == "pattern" else {})},
            "mechanisms": {n: m.to_dict() for n, m in self.mechanisms.items()},
            "constraints": self.constraints.to_dict(),
            "objectives": {n: d for n, d in self.objectives},
            "sampler": {"name": self.sampler.name, "seed": self.sampler.seed, **self.sampler.options},
            # tuning settings only when changed, so that studies made before they existed resume
            "evaluation": {k: v for k, v in self.evaluation.__dict__.items()
                           if not (k in _TUNING_DEFAULTS and v == _TUNING_DEFAULTS[k])},
            "seed": self.seed,
        }
        return out

    def fingerprint(self) -> str:
        """A hash of the normalised space: a study refuses to continue under a different one."""
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def objective_names(self) -> list[str]:
        return [n for n, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    # ------------------------------------------------------------------ sampling
    def suggest(self, trial, throughput_fn: Callable[[ArchConfig], float] | None = None) -> ArchConfig:
        """Sample one architecture with Optuna's define-by-run API.

        Returns a valid ArchConfig at the target dims that meets every constraint, or raises
        :class:`Infeasible`. ``throughput_fn`` (arch -> tokens/s) is needed only when the space
        has ``min_throughput``: the cost model lives in ``attnsearch.evaluators`` and the search
        driver passes it in.
        """
        arch = self.build(self.sample_layers(trial))
        values = self.constraint_values(arch, throughput_fn)
        if any(v > 0 for v in values.values()):
            raise Infeasible(arch, values)
        return arch

    def sample_layers(self, trial) -> list[LayerSpec]:
        names = list(self.mechanisms)
        if self.layout_mode == "per_layer":
            return [self._sample_slot(trial, f"L{i:02d}", names) for i in range(self.target.n_layers)]
        period = trial.suggest_categorical("period", list(self.periods)) if len(self.periods) > 1 else self.periods[0]
        pattern = [self._sample_slot(trial, f"P{j}", names) for j in range(period)]
        return [pattern[i % period] for i in range(self.target.n_layers)]

    def _sample_slot(self, trial, prefix: str, names: list[str]) -> LayerSpec:
        name = trial.suggest_categorical(f"{prefix}.mechanism", names) if len(names) > 1 else names[0]
        return self.mechanisms[name].sample(trial, prefix)

    def build(self, layers: list[LayerSpec], name: str = "") -> ArchConfig:
        return ArchConfig(name=name, layers=layers, **self.target.dims())

    # ------------------------------------------------------------------ constraints
    def state_bytes(self, arch: ArchConfig) -> int:
        """Inference state per sequence of the whole model at the target context (exact)."""
        L, nbytes = self.target.context_len, self.target.dtype_bytes
        return sum(mechanism(l.mechanism).state_bytes(arch, l.params, L, nbytes) for l in arch.layers)

    def constraint_values(self, arch: ArchConfig, throughput_fn=None) -> dict[str, float]:
        """Each constraint as a number, > 0 when violated (relative for bytes and tokens/s)."""
        c, out = self.constraints, {}
        n_full = sum(1 for l in arch.layers if l.mechanism == "full")
        if c.min_full_layers is not None:
            out["min_full_layers"] = float(c.min_full_layers - n_full)
        if c.max_full_layers is not None:
            out["max_full_layers"] = float(n_full - c.max_full_layers)
        if c.max_state_bytes is not None:
            out["max_state_bytes"] = self.state_bytes(arch) / c.max_state_bytes - 1.0
        if c.min_throughput is not None:
            if throughput_fn is None:
                raise ValueError("constraints.min_throughput needs a throughput estimator; "
                                 "sample through attnsearch.search (it passes one)")
            out["min_throughput"] = 1.0 - throughput_fn(arch) / c.min_throughput
        return out

    def impossible_reason(self, throughput_fn=None) -> str | None:
        """A reason no layout can meet the constraints, found before any training; None when
        each constraint on its own can be met (necessary conditions, checked at the parameter
        extremes of every allowed mechanism)."""
        c, n = self.constraints, self.target.n_layers
        has_full = "full" in self.mechanisms
        non_full = [m for m in self.mechanisms if m != "full"]
        where = f"{self.source}: constraints"
        if c.min_full_layers is not None and c.max_full_layers is not None and c.min_full_layers > c.max_full_layers:
            return f"{where}: min_full_layers {c.min_full_layers} > max_full_layers {c.max_full_layers}"
        if c.min_full_layers and not has_full:
            return f"{where}.min_full_layers: {c.min_full_layers} full layers wanted but 'full' is not an allowed mechanism"
        if c.min_full_layers and c.min_full_layers > n:
            return f"{where}.min_full_layers: {c.min_full_layers} is more than the {n} layers of the target"
        if c.max_full_layers is not None and c.max_full_layers < n and not non_full:
            return f"{where}.max_full_layers: only 'full' is allowed, so every one of the {n} layers is full"
        if self.layout_mode == "pattern" and (c.min_full_layers or c.max_full_layers is not None):
            counts = set()
            for p in self.periods:
                for k in range(p + 1):   # k full slots in the pattern
                    if (k and not has_full) or (k < p and not non_full):
                        continue
                    for pattern in ([True] * k + [False] * (p - k),):
                        counts |= {sum(pattern[(i - s) % p] for i in range(n)) for s in range(p)}
            lo, hi = c.min_full_layers or 0, c.max_full_layers if c.max_full_layers is not None else n
            if not any(lo <= x <= hi for x in counts):
                return f"{where}: no period in {list(self.periods)} tiles {n} layers with {lo}..{hi} full layers"
        if c.max_state_bytes is None and c.min_throughput is None:
            return None
        # per mechanism, its cheapest corner; then the cheapest layout within the full-layer bounds
        proto = self.build([LayerSpec(mechanism=next(iter(self.mechanisms)))] * n)
        need_full = c.min_full_layers or 0
        free = n - need_full
        allow_more_full = c.max_full_layers is None or c.max_full_layers > need_full
        if c.max_state_bytes is not None:
            L, nb = self.target.context_len, self.target.dtype_bytes
            per = {m: min(mechanism(m).state_bytes(proto, l.params, L, nb) for l in mc.corner_layers())
                   for m, mc in self.mechanisms.items()}
            best_free = min(v for m, v in per.items() if m != "full" or allow_more_full)
            least = need_full * per.get("full", 0) + free * best_free
            if least > c.max_state_bytes:
                return (f"{where}.max_state_bytes: the smallest possible state is {least:.4g} bytes "
                        f"> {c.max_state_bytes:.4g}")
        if c.min_throughput is not None and throughput_fn is not None:
            best = {}
            for m, mc in self.mechanisms.items():
                best[m] = max((throughput_fn(self.build([l] * n)), l) for l in mc.corner_layers())[1] \
                    if len(mc.corner_layers()) > 1 else mc.corner_layers()[0]
            fastest = max((m for m in best if m != "full" or allow_more_full),
                          key=lambda m: throughput_fn(self.build([best[m]] * n)))
            layers = [best["full"]] * need_full + [best[fastest]] * free if need_full else [best[fastest]] * n
            top = throughput_fn(self.build(layers))
            if top < c.min_throughput:
                return (f"{where}.min_throughput: the fastest possible layout reaches {top:.4g} tokens/s "
                        f"< {c.min_throughput:.4g}")
        return None

    # ------------------------------------------------------------------ baselines
    def params_for(self, arch: ArchConfig) -> dict | None:
        """Optuna params that make ``sample_layers`` reproduce ``arch``'s layers, or None when the
        architecture cannot be expressed in this space."""
        layers = arch.layers
        if len(layers) != self.target.n_layers:
            return None
        if self.layout_mode == "per_layer":
            slots = [(f"L{i:02d}", layer) for i, layer in enumerate(layers)]
            out = {}
        else:
            same = lambda a, b: a.model_dump() == b.model_dump()  # noqa: E731
            period = next((p for p in sorted(self.periods)
                           if all(same(layers[i], layers[i % p]) for i in range(len(layers)))), None)
            if period is None:
                return None
            slots = [(f"P{j}", layers[j]) for j in range(period)]
            out = {"period": period} if len(self.periods) > 1 else {}
        for prefix, layer in slots:
            mc = self.mechanisms.get(layer.mechanism)
            if mc is None:
                return None
            values = mc.param_values_for(layer, prefix)
            if values is None:
                return None
            if len(self.mechanisms) > 1:
                out[f"{prefix}.mechanism"] = layer.mechanism
            out.update(values)
        return out

    def baselines(self, throughput_fn=None) -> list[tuple[str, dict, ArchConfig]]:
        """(name, params, arch) of the literature layouts that fit the space and its constraints."""
        from .presets import preset

        out = []
        for name in BASELINES:
            arch = preset(name, **self.target.dims())
            params = self.params_for(arch)
            if params is None:
                continue
            try:
                values = self.constraint_values(arch, throughput_fn)
            except ValueError:
                continue
            if any(v > 0 for v in values.values()):
                continue
            out.append((name, params, arch))
        return out


# ----------------------------------------------------------------------------- parsing

_TOP = ("target", "proxy", "layout", "mechanisms", "constraints", "objectives", "sampler",
        "evaluation", "seed")
_TARGET_REQUIRED = ("d_model", "n_layers", "n_heads", "head_dim", "vocab_size", "context_len")
_TARGET_OPTIONAL = ("batch_tokens", "dtype", "gpu", "v_head_dim", "mlp_ratio")


def _int(value, where, low=1, high=None) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f"an integer >= {low}" + (f" and <= {high}" if high is not None else "")
        raise _err(where, f"must be {rng}, got {value!r}")
    return value


def _bool(value, where) -> bool:
    if not isinstance(value, bool):
        raise _err(where, f"must be true or false, got {value!r}")
    return value


def _number(value, where, positive=True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise _err(where, f"must be a {'positive ' if positive else ''}number, got {value!r}")
    return float(value)


def _mapping(value, where, allowed_keys=None) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _err(where, f"must be a mapping, got {type(value).__name__}")
    if allowed_keys is not None:
        for key in value:
            if key not in allowed_keys:
                raise _err(f"{where}.{key}" if where else str(key), "unknown field", ", ".join(allowed_keys))
    return value


def _parse_target(raw, src) -> Target:
    where = f"{src}: target"
    raw = _mapping(raw, where, _TARGET_REQUIRED + _TARGET_OPTIONAL)
    for key in _TARGET_REQUIRED:
        if key not in raw:
            raise _err(f"{where}.{key}", "required field is missing")
    vals = {k: _int(raw[k], f"{where}.{k}") for k in _TARGET_REQUIRED}
    batch = _int(raw.get("batch_tokens", vals["context_len"]), f"{where}.batch_tokens")
    dtype = raw.get("dtype", "bf16")
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise _err(f"{where}.dtype", f"{dtype!r} is not a dtype", ", ".join(DTYPE_BYTES))
    gpu = raw.get("gpu", "H100")
    if not isinstance(gpu, str) or not gpu:
        raise _err(f"{where}.gpu", f"must be a GPU name, got {gpu!r}")
    # the name is checked against the cost model's GPU table by attnsearch.search.load_space
    # (space/ does not import evaluators/)
    v_head = _int(raw["v_head_dim"], f"{where}.v_head_dim") if raw.get("v_head_dim") is not None else None
    mlp = _number(raw["mlp_ratio"], f"{where}.mlp_ratio") if raw.get("mlp_ratio") is not None else None
    return Target(batch_tokens=batch, dtype=dtype, gpu=gpu, v_head_dim=v_head, mlp_ratio=mlp, **vals)


def _parse_mechanisms(raw, src) -> dict[str, MechanismChoice]:
    where = f"{src}: mechanisms"
    if raw is None:
        raise _err(where, "required field is missing", ", ".join(MECHANISMS))
    if isinstance(raw, list):   # a bare list of names: each with its defaults
        for i, n in enumerate(raw):
            if not isinstance(n, str):
                raise _err(f"{where}[{i}]", f"must be a mechanism name, got {n!r}", ", ".join(MECHANISMS))
        if len(set(raw)) != len(raw):
            raise _err(where, "a mechanism is listed twice")
        raw = {n: {} for n in raw}
    raw = _mapping(raw, where)
    if not raw:
        raise _err(where, "at least one mechanism is needed", ", ".join(MECHANISMS))
    out = {}
    for name, body in raw.items():
        if name not in MECHANISMS:
            raise _err(f"{where}.{name}", "unknown mechanism", ", ".join(MECHANISMS))
        mech = MECHANISMS[name]
        quality = mech.quality_params()
        kernel_keys = _kernel_keys(name)
        body = _mapping(body, f"{where}.{name}", list(quality) + ["kernel"])
        params = {}
        for pname, spec in quality.items():
            if pname in body:
                params[pname] = _parse_param_choice(spec, body[pname], f"{where}.{name}.{pname}")
            else:
                params[pname] = Choice("fixed", value=spec.default)
        kraw = _mapping(body.get("kernel"), f"{where}.{name}.kernel", list(kernel_keys))
        kernel = {k: _parse_kernel_choice(kernel_keys[k], kraw.get(k, AUTO), f"{where}.{name}.kernel.{k}")
                  for k in kernel_keys}
        out[name] = MechanismChoice(name, params, kernel)
    return out


def _parse_objectives(raw, src) -> tuple[tuple[str, str], ...]:
    where = f"{src}: objectives"
    if raw is None:
        return tuple((n, OBJECTIVES[n]) for n in DEFAULT_OBJECTIVES)
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for i, entry in enumerate(raw):
            if isinstance(entry, str):
                items.append((entry, None))
            elif isinstance(entry, dict) and len(entry) == 1:
                items.append(next(iter(entry.items())))
            else:
                raise _err(f"{where}[{i}]", f"must be a name or {{name: direction}}, got {entry!r}",
                           ", ".join(OBJECTIVES))
    else:
        raise _err(where, f"must be a list or a mapping, got {type(raw).__name__}")
    if not items:
        raise _err(where, "at least one objective is needed", ", ".join(OBJECTIVES))
    out, seen = [], set()
    for name, direction in items:
        if name not in OBJECTIVES:
            raise _err(f"{where}.{name}", "unknown objective", ", ".join(OBJECTIVES))
        if name in seen:
            raise _err(f"{where}.{name}", "listed twice")
        seen.add(name)
        direction = OBJECTIVES[name] if direction is None else direction
        if direction not in ("maximize", "minimize"):
            raise _err(f"{where}.{name}", f"direction {direction!r} not allowed", "maximize, minimize")
        out.append((name, direction))
    return tuple(out)


def _parse_sampler(raw, seed, src) -> SamplerSpec:
    where = f"{src}: sampler"
    if raw is None:
        return SamplerSpec("tpe", seed)
    if isinstance(raw, str):
        raw = {"name": raw}
    raw = dict(_mapping(raw, where, ("name", "seed", "population_size", "n_startup_trials")))
    name = raw.pop("name", "tpe")
    if not isinstance(name, str) or name not in SAMPLERS:
        raise _err(f"{where}.name", f"unknown sampler {name!r}", ", ".join(SAMPLERS))
    s = raw.pop("seed", seed)
    s = None if s is None else _int(s, f"{where}.seed", low=0)
    options = {}
    if "population_size" in raw:
        if name != "nsga2":
            raise _err(f"{where}.population_size", f"only for the nsga2 sampler, not {name}")
        options["population_size"] = _int(raw["population_size"], f"{where}.population_size", low=2)
    if "n_startup_trials" in raw:
        if name not in ("tpe", "gp"):
            raise _err(f"{where}.n_startup_trials", f"only for the tpe and gp samplers, not {name}")
        options["n_startup_trials"] = _int(raw["n_startup_trials"], f"{where}.n_startup_trials", low=0)
    return SamplerSpec(name, s, options)


def _parse_space(data, src) -> SearchSpace:
    if not isinstance(data, dict):
        raise SpaceError(f"{src}: the space must be a mapping with fields {', '.join(_TOP)}, "
                         f"got {type(data).__name__}")
    for key in data:
        if key not in _TOP:
            raise _err(f"{src}: {key}", "unknown field", ", ".join(_TOP))
    target = _parse_target(data.get("target"), src) if data.get("target") is not None else None
    if target is None:
        raise _err(f"{src}: target", "required field is missing", ", ".join(_TARGET_REQUIRED))
    mechanisms = _parse_mechanisms(data.get("mechanisms"), src)

    layout = _mapping(data.get("layout"), f"{src}: layout", ("mode", "periods"))
    mode = layout.get("mode", "per_layer")
    if mode not in LAYOUT_MODES:
        raise _err(f"{src}: layout.mode", f"{mode!r} is not a layout mode", ", ".join(LAYOUT_MODES))
    if "periods" in layout and mode != "pattern":
        raise _err(f"{src}: layout.periods", "only used with mode: pattern")
    if "periods" in layout:
        periods = layout["periods"]
        if not isinstance(periods, list) or not periods:
            raise _err(f"{src}: layout.periods", f"must be a non-empty list of integers, got {periods!r}")
        periods = tuple(sorted({_int(p, f"{src}: layout.periods[{i}]", 1, target.n_layers)
                                for i, p in enumerate(periods)}))
    else:
        periods = tuple(p for p in DEFAULT_PERIODS if p <= target.n_layers)

    craw = _mapping(data.get("constraints"), f"{src}: constraints", tuple(Constraints.__dataclass_fields__))
    cons = Constraints(
        min_full_layers=_int(craw["min_full_layers"], f"{src}: constraints.min_full_layers", 0)
        if craw.get("min_full_layers") is not None else None,
        max_full_layers=_int(craw["max_full_layers"], f"{src}: constraints.max_full_layers", 0)
        if craw.get("max_full_layers") is not None else None,
        max_state_bytes=_number(craw["max_state_bytes"], f"{src}: constraints.max_state_bytes")
        if craw.get("max_state_bytes") is not None else None,
        min_throughput=_number(craw["min_throughput"], f"{src}: constraints.min_throughput")
        if craw.get("min_throughput") is not None else None,
    )

    seed = _int(data.get("seed", 0), f"{src}: seed", low=0)
    objectives = _parse_objectives(data.get("objectives"), src)
    sampler = _parse_sampler(data.get("sampler"), seed, src)

    eraw = _mapping(data.get("evaluation"), f"{src}: evaluation", tuple(EvaluationSpec.__dataclass_fields__))
    mode_tp = eraw.get("throughput", "estimated")
    if mode_tp not in THROUGHPUT_MODES:
        raise _err(f"{src}: evaluation.throughput", f"{mode_tp!r} is not a throughput mode", ", ".join(THROUGHPUT_MODES))
    evaluation = EvaluationSpec(
        throughput=mode_tp,
        cpus_per_trial=_number(eraw.get("cpus_per_trial", 1.0), f"{src}: evaluation.cpus_per_trial"),
        gpus_per_trial=_number(eraw.get("gpus_per_trial", 0.25), f"{src}: evaluation.gpus_per_trial"),
        trial_timeout_s=_number(eraw["trial_timeout_s"], f"{src}: evaluation.trial_timeout_s")
        if eraw.get("trial_timeout_s") is not None else None,
        tune_kernels=_bool(eraw.get("tune_kernels", True), f"{src}: evaluation.tune_kernels"),
        tune_trials=_int(eraw.get("tune_trials", 16), f"{src}: evaluation.tune_trials", low=1),
        tune_budget_s=_number(eraw["tune_budget_s"], f"{src}: evaluation.tune_budget_s")
        if eraw.get("tune_budget_s") is not None else None,
    )
    if evaluation.gpus_per_trial > 1 and not float(evaluation.gpus_per_trial).is_integer():
        raise _err(f"{src}: evaluation.gpus_per_trial", "above 1 it must be a whole number of GPUs")

    proxy = _mapping(data.get("proxy"), f"{src}: proxy")
    _check_proxy(proxy, src)
    space = SearchSpace(target=target, mechanisms=mechanisms, layout_mode=mode, periods=periods,
                        constraints=cons, objectives=objectives, sampler=sampler, evaluation=evaluation,
                        proxy=dict(proxy), seed=seed, source=src)
    reason = space.impossible_reason()
    if reason:
        raise SpaceError(reason)
    return space


def _check_proxy(proxy: dict, src: str) -> None:
    """Validate the proxy spec with the quality evaluator's own schema, when it is available."""
    try:
        from attnsearch.evaluators.quality import ProxySpec
    except ImportError:
        return
    try:
        ProxySpec(**proxy)
    except TypeError as exc:
        raise _err(f"{src}: proxy", str(exc)) from None
    except ValueError as exc:
        errors = getattr(exc, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise _err(f"{src}: proxy" + (f".{loc}" if loc else ""),
                       f"{first.get('msg', 'invalid')}, got {first.get('input')!r}") from None
        raise _err(f"{src}: proxy", str(exc).splitlines()[0]) from None


def load_space(source: "str | Path | dict | SearchSpace") -> SearchSpace:
    """A SearchSpace from a path, a dict, or a SearchSpace (returned as is)."""
    if isinstance(source, SearchSpace):
        return source
    if isinstance(source, dict):
        return SearchSpace.from_dict(source)
    return SearchSpace.load(source)


def default_space_path() -> Path:
    return Path(__file__).with_name("default_space.yaml")
