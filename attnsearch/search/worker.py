"""What runs inside a Ray task: evaluate one architecture, return a plain dict.

Workers never touch the database. ``run_evaluation(fn, request)`` wraps any evaluation function
``fn(request) -> dict of metrics`` and always returns a result dict::

    {"status": "ok" | "fail", "metrics": {...}, "fail_kind": ..., "reason": ...,
     "timings": {"evaluate_s": ...}, "worker": {"node_id", "host", "pid", "device", "versions"}}

An exception in ``fn`` (including an out-of-memory error) becomes ``status: fail`` with the
reason; a metrics dict flagged ``diverged`` (or with a non-finite objective) becomes ``fail``
with kind ``diverged``. Crashes of the worker process itself cannot be caught here: the driver
sees them as Ray errors.

``evaluate_architecture(request)`` is the real evaluation used by default: proxy training for
quality (``attnsearch.evaluators.quality``) and, in ``measured-cpu`` mode, timing the model.
"""
from __future__ import annotations

import math
import os
import platform
import socket
import time
import traceback
from typing import Any, Callable

_VERSIONS: dict | None = None


def software_versions() -> dict:
    global _VERSIONS
    if _VERSIONS is None:
        import importlib.metadata as md

        out = {"python": platform.python_version()}
        for pkg in ("attnsearch", "torch", "triton", "optuna", "ray"):
            try:
                out[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
        _VERSIONS = out
    return dict(_VERSIONS)


def _node_id() -> str | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (inline evaluation in tests): no node id
        pass
    return None


def _device(request: dict) -> str:
    if request.get("device") == "cuda":
        try:
            import torch

            if torch.cuda.is_available():
                return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
        except Exception:
            pass
        return "cuda (unavailable)"
    return f"cpu ({platform.machine()})"


def worker_info(request: dict) -> dict:
    return {"node_id": _node_id(), "host": socket.gethostname(), "pid": os.getpid(),
            "device": _device(request), "versions": software_versions()}


def _is_oom(exc: BaseException) -> bool:
    name = type(exc).__name__
    return isinstance(exc, MemoryError) or name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


_FATAL_CUDA = ("illegal memory access", "device-side assert", "unspecified launch failure",
               "misaligned address", "illegal instruction")


def _is_fatal_cuda(exc: BaseException) -> bool:
    """A CUDA error after which this process's GPU context cannot be used again."""
    text = str(exc).lower()
    return any(s in text for s in _FATAL_CUDA)


def _exit_after_reply(delay_s: float = 2.0) -> None:
    """Leave the Ray worker process shortly after this task's result has gone back: a faulted
    CUDA context would fail every later trial that Ray sends to the same process."""
    try:
        import ray

        if not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
            return                      # not a Ray worker (inline evaluation): nothing to protect
    except Exception:
        return
    import threading

    threading.Timer(delay_s, os._exit, args=(1,)).start()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _compile_seconds(request: dict) -> float | None:
    """Triton compile time so far in this process; GPU trials only (CPU trials run torch)."""
    if request.get("device") != "cuda":
        return None
    from attnsearch.kernels.compile_clock import compile_seconds

    return compile_seconds()


def run_evaluation(fn: Callable[[dict], dict], request: dict) -> dict:
    """Run ``fn(request)`` and turn whatever happens into a plain result dict."""
    info = worker_info(request)
    compiled0 = _compile_seconds(request)
    started_at = time.time()
    t0 = time.perf_counter()
    try:
        out = fn(request) or {}
    except BaseException as exc:  # noqa: BLE001 - every failure must come back as a reason
        if isinstance(exc, (KeyboardInterrupt, SystemExit)) and request.get("_reraise_interrupt"):
            raise
        kind = "oom" if _is_oom(exc) else "exception"
        tb = traceback.format_exc(limit=8)
        if request.get("device") == "cuda" and _is_fatal_cuda(exc):
            _exit_after_reply()
        return {"status": "fail", "fail_kind": kind, "reason": _one_line(exc), "traceback": tb[-4000:],
                "metrics": {}, "timings": {"evaluate_s": time.perf_counter() - t0}, "worker": info}
    metrics = dict(out.get("metrics", out))
    timings = {"evaluate_s": time.perf_counter() - t0, **out.get("timings", {}),
               "task_started_at": started_at, "task_ended_at": time.time()}   # wall clock: isolation checks
    compiled1 = _compile_seconds(request)
    if compiled0 is not None and compiled1 is not None:
        timings["compile_s"] = compiled1 - compiled0      # Triton JIT inside this trial
    result = {"status": "ok", "metrics": metrics, "timings": timings, "worker": info,
              "extra": out.get("extra", {})}
    if out.get("diverged") or metrics.get("diverged"):
        result.update(status="fail", fail_kind="diverged",
                      reason=f"diverged: {out.get('reason') or metrics.get('diverged_reason') or 'non-finite loss'}")
        return result
    for name in request.get("objectives", ()):
        value = metrics.get(name, request.get("metrics", {}).get(name))
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            result.update(status="fail", fail_kind="diverged", reason=f"diverged: objective {name} = {value!r}")
            return result
    return result


def _plain(value: Any):
    """Make a value JSON-friendly (dataclasses, numpy scalars, nested containers)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    elif hasattr(value, "model_dump"):            # pydantic models (QualityResult)
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except Exception:
            return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def evaluate_architecture(request: dict) -> dict:
    """The default evaluation: proxy-trained quality, plus measured CPU throughput if asked."""
    from attnsearch.space.arch import ArchConfig

    arch = ArchConfig.from_dict(request["arch"])
    metrics: dict = {}
    timings: dict = {}
    extra: dict = {}
    out: dict = {"metrics": metrics, "timings": timings, "extra": extra}
    if "quality" in request.get("objectives", ()) or request.get("always_quality"):
        from attnsearch.evaluators import quality as q

        t0 = time.perf_counter()
        proxy = q.ProxySpec(**request.get("proxy", {}))
        if request.get("device") and hasattr(proxy, "device") and "device" not in request.get("proxy", {}):
            proxy = _replace(proxy, device=request["device"])
        result = q.evaluate_quality(arch, proxy)
        timings["quality_s"] = time.perf_counter() - t0
        data = _plain(result)
        if getattr(result, "diverged", False):
            out["diverged"] = True
            out["reason"] = getattr(result, "reason", None) or getattr(result, "diverged_reason", None)
        metrics["quality"] = _quality_score(result)
        extra["quality"] = data
    if request.get("throughput_mode") == "measured" and not request.get("measured_in_driver"):
        # standalone use; inside a study the driver benchmarks on a GPU of its own (isolation)
        from attnsearch.evaluators.throughput import evaluate_throughput

        t0 = time.perf_counter()
        target = request.get("target", {})
        tp = evaluate_throughput(arch, "measured", seq_len=int(target["context_len"]),
                                 batch_tokens=target.get("batch_tokens"), gpu_name=target.get("gpu", "H100"),
                                 dtype=target.get("dtype", "bf16"))
        timings["throughput_s"] = time.perf_counter() - t0
        metrics["throughput"] = tp.tokens_per_s
        metrics["throughput_mode"] = tp.mode
    if request.get("throughput_mode") == "measured-cpu":
        from attnsearch.evaluators.throughput import measure_cpu_throughput

        t0 = time.perf_counter()
        tp = measure_cpu_throughput(arch, seq_len=int(request.get("cpu_seq_len", 256)),
                                    batch=int(request.get("cpu_batch", 1)))
        timings["throughput_s"] = time.perf_counter() - t0
        metrics["throughput"] = tp.tokens_per_s
        metrics["throughput_mode"] = tp.mode
    return out


def _replace(obj, **changes):
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **changes)
    if hasattr(obj, "model_copy"):
        return obj.model_copy(update=changes)
    return obj


def _quality_score(result) -> float:
    for name in ("quality", "score", "quality_score"):
        value = getattr(result, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    raise ValueError(f"quality result {type(result).__name__} has no quality score field")
