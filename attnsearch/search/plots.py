"""Pareto plots of a study (matplotlib, Agg backend: no display, no network).

One figure: the quality-throughput plane (dominated trials grey, the Pareto front as a
staircase, literature baselines labelled), a quality-state-bytes panel when state bytes are
measured, and the hypervolume history by trial number.
"""
from __future__ import annotations

from pathlib import Path

# objective / metric -> (axis label with units, scale applied to the raw value)
AXES = {
    "quality": ("quality score (proxy tasks, 0-1, higher is better)", 1.0),
    "throughput": ("throughput (tokens/s at the target, higher is better)", 1.0),
    "state_bytes": ("inference state per sequence (MiB at target context, lower is better)", 1 / 2**20),
}
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _value(row: dict, name: str):
    values = row.get("values") or {}
    if name in values:
        return values[name]
    return (row.get("metrics") or {}).get(name)


def _panel(ax, rows: list[dict], x: str, y: str, staircase: bool):
    xlabel, xs = AXES.get(x, (x, 1.0))
    ylabel, ys = AXES.get(y, (y, 1.0))
    done = [r for r in rows if r["state"] == "COMPLETE" and _value(r, x) is not None and _value(r, y) is not None]
    dominated = [r for r in done if not r["pareto"]]
    front = sorted((r for r in done if r["pareto"]), key=lambda r: _value(r, x))
    ax.scatter([_value(r, x) * xs for r in dominated], [_value(r, y) * ys for r in dominated],
               s=18, color="0.65", label=f"dominated ({len(dominated)})", zorder=2)
    if front:
        fx = [_value(r, x) * xs for r in front]
        fy = [_value(r, y) * ys for r in front]
        if staircase:
            # both axes maximised, front sorted by x: quality y[i] holds on (x[i-1], x[i]]
            ax.plot(fx, fy, "-", color="tab:blue", lw=1.2, alpha=0.6, zorder=3, drawstyle="steps-pre")
        ax.scatter(fx, fy, s=36, color="tab:blue", edgecolor="black", lw=0.5,
                   label=f"Pareto front ({len(front)})", zorder=4)
        for r in front:
            ax.annotate(r["layout"] or "", (_value(r, x) * xs, _value(r, y) * ys), fontsize=6,
                        xytext=(3, -8), textcoords="offset points", color="tab:blue", family="monospace")
    for r in done:
        if r.get("baseline"):
            ax.scatter([_value(r, x) * xs], [_value(r, y) * ys], s=70, marker="*", color="tab:orange",
                       edgecolor="black", lw=0.5, zorder=5)
            ax.annotate(r["baseline"], (_value(r, x) * xs, _value(r, y) * ys), fontsize=7,
                        xytext=(4, 4), textcoords="offset points", color="tab:red")
    if any(r.get("baseline") for r in done):
        ax.scatter([], [], s=70, marker="*", color="tab:orange", edgecolor="black", lw=0.5,
                   label="literature baseline")
    if x == "throughput" and done and max(_value(r, x) for r in done) / max(min(_value(r, x) for r in done), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def plot_study(study_name: str, storage_url: str | None = None, out: str | Path = "pareto.png") -> Path:
    """Write the study's Pareto plot to ``out`` (.png, .svg or .pdf) and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .table import study_table

    out = Path(out)
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(f"out: {str(out)!r} must end in one of {', '.join(PLOT_SUFFIXES)}")
    if not out.parent.is_dir():
        raise ValueError(f"out: folder {str(out.parent)!r} does not exist")
    tab = study_table(study_name, storage_url, every=True, history=True)
    n_complete = tab.counts.get("COMPLETE", 0)
    if n_complete == 0:
        raise ValueError(f"study {study_name!r} has no completed trial to plot yet")
    rows = tab.rows
    # by trial number, computed from the trials: never dips (the stored ``hv_history`` is in
    # finish order, which parallel workers make differ from number order)
    history = tab.hv_by_number or []
    target = tab.attrs.get("target") or {}
    objectives = tab.objectives
    x = "throughput" if "throughput" in objectives else objectives[-1]
    panels = [(x, "quality" if "quality" in objectives else objectives[0])]
    if "state_bytes" in objectives or any((r.get("metrics") or {}).get("state_bytes") for r in rows):
        panels.append(("state_bytes", panels[0][1]))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.2 * (len(panels) + 1), 4.4), squeeze=False)
    directions = dict(zip(objectives, tab.directions))
    for i, (ax, (px, py)) in enumerate(zip(axes[0], panels)):
        staircase = (i == 0 and len(objectives) == 2 and directions.get(px) == directions.get(py) == "maximize")
        _panel(ax, rows, px, py, staircase)
    ax = axes[0][-1]
    if history:
        numbers = [h[0] for h in history]
        ax.step(numbers, [h[1] for h in history], where="post", color="tab:green")
        ax.scatter(numbers, [h[1] for h in history], s=8, color="tab:green")
    ax.set_xlabel("trial number (hypervolume of the completed trials up to it)", fontsize=8)
    ax.set_ylabel("hypervolume (" + " x ".join(objectives) + ", reference at 0)", fontsize=8)
    ax.set_title("hypervolume history", fontsize=9)
    ax.grid(alpha=0.3)
    where = (f"target d_model {target.get('d_model')}, {target.get('n_layers')} layers, context "
             f"{target.get('context_len')}, {target.get('gpu')} {target.get('dtype')}") if target else ""
    on_front = sum(1 for r in rows if r["pareto"])
    fig.suptitle(f"study {study_name}: {n_complete} completed trials, {on_front} on the Pareto front"
                 + (f"\n{where}" if where else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


__all__ = ["plot_study", "AXES", "PLOT_SUFFIXES"]
