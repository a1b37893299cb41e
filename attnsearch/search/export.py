"""Export one trial of a study as a JSON file that builds the model, and check such files.

The file (``format: attnsearch-export``, ``export_schema_version: 1``)::

    {
      "format": "attnsearch-export", "export_schema_version": 1,
      "name": "default-trial-7",
      "layout": "SSSF...",                        # one letter per layer (catalogue codes)
      "layer_types": ["sliding_attention", ..., "full_attention"],   # Hugging Face-style names
      "target": {d_model, n_layers, ..., context_len, gpu, dtype},   # what the costs refer to
      "layers": [{"index", "mechanism", "layer_type", "params", "kernel_config", "kernel_tuning"}],
      "metrics": {quality, throughput, state_bytes, ...},            # as measured in the study
      "objectives": {"quality": "maximize", ...},
      "selection": {"policy", "filters", "pareto", "baseline"},
      "provenance": {study, trial, storage, space_source, gpu, device, software, created_at,
                     trial_completed_at, attnsearch_version},
      "arch": {...}                               # the ArchConfig: what build_model reads
    }

``attnsearch.models.build_model("best.json")`` accepts it (``ArchConfig.from_dict`` unwraps
``arch``). Nothing in the file is a local absolute path unless ``include_paths=True``: a SQLite
URL keeps only the file name, a space file only its name; passwords are never written.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from attnsearch.space.arch import EXPORT_FORMAT, ArchConfig
from attnsearch.space.catalogue import ConfigError, OneLineError, mechanism
from attnsearch.storage import redact_url

from .worker import software_versions

EXPORT_SCHEMA_VERSION = 1

# mechanism -> the layer-type name used by Hugging Face configs (Gemma 3 / Qwen3-Next /
# MiniMax `layer_types`; Jamba-style "mamba"); kinds with no common name get a descriptive one
LAYER_TYPES = {
    "full": "full_attention",
    "sliding_window": "sliding_attention",
    "dilated": "sparse_attention",
    "random_sparse": "sparse_attention",
    "longformer": "sparse_attention",
    "bigbird": "sparse_attention",
    "block_topk": "sparse_attention",
    "linear": "linear_attention",
    "performer": "linear_attention",
    "cosformer": "linear_attention",
    "retnet": "linear_attention",
    "mamba2": "mamba",
    "gla": "linear_attention",
    "deltanet": "linear_attention",
    "gated_deltanet": "linear_attention",
}

_REQUIRED = ("format", "export_schema_version", "layer_types", "layers", "arch", "provenance")


class ExportError(OneLineError):
    """An export cannot be written or a file is not a valid export (one line naming the field)."""


# ----------------------------------------------------------------------------- privacy helpers

def public_storage(url: str, include_paths: bool = False) -> str:
    """The storage URL as an export may show it: password hidden; for SQLite the file name only."""
    safe = redact_url(url)
    if include_paths or not safe.startswith("sqlite"):
        return safe
    scheme, _, path = safe.partition(":///")
    return f"{scheme}:///{Path(path).name}" if path else safe


def public_path(path: str | None, include_paths: bool = False) -> str | None:
    if not path or include_paths:
        return path
    return Path(path).name if ("/" in path or "\\" in path) else path


# ----------------------------------------------------------------------------- building

def layer_types(arch: ArchConfig) -> list[str]:
    return [LAYER_TYPES[layer.mechanism] for layer in arch.layers]


def _layer_entries(arch: ArchConfig, tuned: list | None = None) -> list[dict]:
    out = []
    for i, layer in enumerate(arch.layers):
        if tuned:
            how = "tuned"            # measured by the study's auto-tuner on its GPU
        else:
            # fixed/searched in the space, or left to the kernels' per-GPU defaults
            how = "space" if layer.kernel_config else "default"
        out.append({
            "index": i, "mechanism": layer.mechanism, "layer_type": LAYER_TYPES[layer.mechanism],
            "op": mechanism(layer.mechanism).op, "params": dict(layer.params),
            "kernel_config": dict(layer.kernel_config or {}), "kernel_tuning": how,
        })
    return out


def with_tuned_kernels(arch: ArchConfig, kernel_configs: list | None) -> ArchConfig:
    """``arch`` with the kernel configs a measured study tuned for it (one per layer)."""
    if not kernel_configs:
        return arch
    if len(kernel_configs) != len(arch.layers):
        raise ExportError(f"trial has {len(kernel_configs)} tuned kernel configs for {len(arch.layers)} layers")
    return arch.with_layers([{**layer.model_dump(), "kernel_config": {**(layer.kernel_config or {}), **cfg}}
                             for layer, cfg in zip(arch.layers, kernel_configs)])


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_export(row: dict, *, study_name: str, storage_url: str, study_attrs: dict,
                 policy: str | None, filters: dict, include_paths: bool = False) -> dict:
    """The export document for one trial row (as from ``attnsearch.search.select_trial``)."""
    if not row.get("arch"):
        raise ExportError(f"trial {row.get('number')} of study {study_name!r} has no recorded architecture")
    arch = ArchConfig.from_dict(row["arch"])
    arch = ArchConfig.from_dict({**arch.to_dict(), "name": f"{study_name}-trial-{row['number']}"})
    tuned = row.get("kernel_configs")
    arch = with_tuned_kernels(arch, tuned)
    worker = row.get("worker") or {}
    target = dict(study_attrs.get("target") or {})
    objectives = dict(zip(study_attrs.get("objectives") or [], study_attrs.get("directions") or []))
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return {
        "format": EXPORT_FORMAT,
        "export_schema_version": EXPORT_SCHEMA_VERSION,
        "name": arch.name,
        "layout": arch.layout_string(),
        "layer_types": layer_types(arch),
        "target": target,
        "layers": _layer_entries(arch, tuned),
        "metrics": {k: _finite(v) for k, v in (row.get("metrics") or {}).items()},
        "objectives": objectives,
        "selection": {"policy": policy if row.get("selected_by") != "trial" else None,
                      "trial": row["number"], "filters": {k: v for k, v in filters.items() if v is not None},
                      "pareto": bool(row.get("pareto")), "baseline": row.get("baseline")},
        "provenance": {
            "study": study_name, "trial": row["number"],
            "storage": public_storage(storage_url, include_paths),
            "space_source": public_path(study_attrs.get("space_source"), include_paths),
            "space_fingerprint": study_attrs.get("space_fingerprint"),
            "gpu": target.get("gpu"),                      # the GPU the costs are computed for
            "device": worker.get("device"),                # where the proxy was trained
            "software": {**(worker.get("versions") or {}), "exported_with": software_versions()},
            "attnsearch_version": study_attrs.get("attnsearch_version"),
            "trial_completed_at": row.get("datetime_complete"),
            "created_at": now,
        },
        "arch": arch.to_dict(),
    }


def export_trial(study_name: str, storage_url: str | None = None, *, policy: str = "knee",
                 min_throughput: float | None = None, max_state_bytes: float | None = None,
                 trial_number: int | None = None, include_paths: bool = False) -> dict:
    """Select a trial (policy and filters, or ``trial_number``) and build its export document."""
    from attnsearch.storage import resolve_url

    from . import select_trial
    from .study import load_study

    url = resolve_url(storage_url)
    study = load_study(study_name, url)
    try:
        row = select_trial(study_name, url, policy=policy, min_throughput=min_throughput,
                           max_state_bytes=max_state_bytes, trial_number=trial_number)
    except ValueError as exc:   # StudyError, and pareto's "no trial meets ..." as one line
        msg = str(exc)
        raise ExportError(msg if msg.startswith(("study", "trial")) else f"study {study_name!r}: {msg}") from None
    if trial_number is not None:
        row = {**row, "selected_by": "trial"}
    return build_export(row, study_name=study_name, storage_url=url, study_attrs=study.user_attrs,
                        policy=policy, filters={"min_throughput": min_throughput,
                                                "max_state_bytes": max_state_bytes},
                        include_paths=include_paths)


def write_export(doc: dict, path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"out: {str(path)!r} is a directory (give a file name such as best.json)")
    if not path.parent.is_dir():
        raise ExportError(f"out: folder {str(path.parent)!r} does not exist")
    path.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    return path


# ----------------------------------------------------------------------------- checking / loading

def read_json(path: str | Path) -> dict:
    path = Path(path)
    try:
        if not path.is_file():
            raise ExportError(f"{str(path)[:200]}: no such file")
        text = path.read_text()
    except OSError as exc:                           # e.g. a file name too long, no permission
        raise ExportError(f"{str(path)[:200]}: cannot read the file ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not a text file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: must be a JSON object, got {type(data).__name__}")
    return data


def check_export(data: dict, where: str = "export") -> ArchConfig:
    """Validate an export document (or a bare ArchConfig); returns the ArchConfig it builds."""
    if data.get("format") != EXPORT_FORMAT:
        if "format" in data:
            raise ExportError(f"{where}: format: {data['format']!r} is not {EXPORT_FORMAT!r}")
        try:                                           # a bare ArchConfig file is fine too
            return ArchConfig.from_dict(data)
        except ConfigError as exc:
            raise ExportError(f"{where}: {exc}") from None
    for key in _REQUIRED:
        if key not in data:
            raise ExportError(f"{where}: {key}: required field is missing")
    version = data["export_schema_version"]
    if version != EXPORT_SCHEMA_VERSION:
        raise ExportError(f"{where}: export_schema_version: this attnsearch reads version "
                          f"{EXPORT_SCHEMA_VERSION}, got {version!r}")
    if not isinstance(data["arch"], dict):
        raise ExportError(f"{where}: arch: must be a JSON object, got {type(data['arch']).__name__}")
    try:
        arch = ArchConfig.from_dict(data["arch"])
    except ConfigError as exc:
        raise ExportError(f"{where}: arch.{exc}") from None
    expected = layer_types(arch)
    if data["layer_types"] != expected:
        raise ExportError(f"{where}: layer_types: does not match arch.layers (expected {expected})")
    layers = data["layers"]
    if not isinstance(layers, list) or len(layers) != arch.n_layers:
        raise ExportError(f"{where}: layers: expected a list of {arch.n_layers} entries")
    for i, (entry, layer) in enumerate(zip(layers, arch.layers)):
        if not isinstance(entry, dict) or entry.get("mechanism") != layer.mechanism:
            raise ExportError(f"{where}: layers[{i}].mechanism: does not match arch.layers[{i}] ({layer.mechanism})")
    return arch


def load_export(path: str | Path) -> ArchConfig:
    """The ArchConfig of an export file (or a bare ArchConfig JSON), fully checked."""
    return check_export(read_json(path), str(path))


__all__ = ["EXPORT_FORMAT", "EXPORT_SCHEMA_VERSION", "LAYER_TYPES", "ExportError", "build_export",
           "export_trial", "write_export", "check_export", "load_export", "read_json", "layer_types",
           "public_storage", "public_path"]
