"""optuna-dashboard on the study database: the study note, and serving.

What the dashboard shows of an attnsearch study: metric names (set at creation, so the
Pareto-front plot is labelled), every trial's user attrs (layout string, metrics, timings, the
reason of a failure), and a markdown note written here that summarises the space and target.
"""
from __future__ import annotations

import ipaddress
import warnings

from .study import load_study

ALL_INTERFACES = ("0.0.0.0", "::", "[::]", "")


def _fmt_choice(value) -> str:
    if isinstance(value, dict):
        if "low" in value:
            return f"{value['low']}..{value['high']}" + (" (log)" if value.get("log") else "")
        return ", ".join(f"{k}: {_fmt_choice(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "{" + ", ".join(str(v) for v in value) + "}"
    return str(value)


def study_note(attrs: dict, study_name: str) -> str:
    """Markdown summary of a study from its user attrs (space, target, objectives)."""
    space = attrs.get("space") or {}
    target = attrs.get("target") or {}
    lines = [f"## attnsearch study `{study_name}`", ""]
    if target:
        lines += ["### Target", "",
                  f"d_model **{target.get('d_model')}**, **{target.get('n_layers')}** layers, "
                  f"{target.get('n_heads')} heads x {target.get('head_dim')}, vocab {target.get('vocab_size')}, "
                  f"context **{target.get('context_len')}**, {target.get('batch_tokens')} tokens/step, "
                  f"{target.get('dtype')} on **{target.get('gpu')}** (costs are computed for this GPU).", ""]
    objectives = attrs.get("objectives") or []
    directions = attrs.get("directions") or []
    if objectives:
        lines += ["### Objectives", "", ", ".join(f"{o} ({d})" for o, d in zip(objectives, directions)), ""]
    mechs = space.get("mechanisms") or {}
    if mechs:
        lines += ["### Space", "", "| mechanism | parameters |", "|---|---|"]
        for name, params in mechs.items():
            text = "; ".join(f"{k} = {_fmt_choice(v)}" for k, v in (params or {}).items()) or "defaults"
            lines.append(f"| {name} | {text} |")
        layout = space.get("layout") or {}
        lines += ["", f"Layout mode: **{layout.get('mode', 'per_layer')}**"
                  + (f", periods {layout.get('periods')}" if layout.get("periods") else "") + "."]
        cons = space.get("constraints") or {}
        if cons:
            lines.append("Constraints: " + ", ".join(f"{k} = {v:g}" if isinstance(v, float) else f"{k} = {v}"
                                                     for k, v in cons.items()) + ".")
        sampler = space.get("sampler") or {}
        evaluation = space.get("evaluation") or {}
        lines.append(f"Sampler: {sampler.get('name', 'tpe')} (seed {sampler.get('seed')}); throughput: "
                     f"{evaluation.get('throughput', 'estimated')}.")
    baselines = attrs.get("baselines")
    if baselines:
        lines += ["", "Literature baselines enqueued: " + ", ".join(baselines) + "."]
    lines += ["", "Each trial's user attributes hold its `layout` (one letter per layer), `metrics`, "
              "`run` (timings, worker, proxy details) and, for a failed trial, `fail_reason`. Export a layout with "
              f"`attnsearch export {study_name} --pick knee --out best.json`."]
    return "\n".join(lines) + "\n"


def write_study_note(study_name: str, storage_url: str | None = None) -> None:
    """Save (or refresh) the study note shown on the dashboard's study page."""
    from optuna_dashboard import get_note, save_note

    study = load_study(study_name, storage_url)
    body = study_note(study.user_attrs, study_name)
    if get_note(study) != body:
        save_note(study, body)


def binds_everywhere(host: str) -> bool:
    """True when ``host`` listens on every interface (reachable from the network)."""
    if host in ALL_INTERFACES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Raise OSError now if (host, port) cannot be bound, before the server prints its banner."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), port))


def serve(storage_url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on the database (blocks until interrupted)."""
    from optuna_dashboard import run_server

    from .study import open_storage

    _url, storage = open_storage(storage_url)
    check_port(host, port)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_server(storage, host=host, port=port)


__all__ = ["study_note", "write_study_note", "serve", "check_port", "binds_everywhere"]
