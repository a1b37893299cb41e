"""attnsearch command line (Typer). Thin: parse, call into search/, print.

Every user mistake ends the same way: one line ``Error: <what is wrong>`` on stderr, exit code 2,
no traceback, and the database untouched (read-only commands never create a database).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__

app = typer.Typer(help="Search hybrid attention layouts by measurement: proxy-trained quality vs. "
                       "kernel throughput, on a Pareto front stored in one database.",
                  no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]})

DEFAULT_STUDY = "default"
# The zero-config run: the built-in CPU space, a small budget, and a hard wall-clock cap so it
# ends within 10 minutes on 2 cores whatever the machine's speed (unfinished trials go back to
# the study and a later `attnsearch run` finishes them).
ZERO_CONFIG_TRIALS = 14
ZERO_CONFIG_ASK_UNTIL_S = 400       # stop starting new trials after this
ZERO_CONFIG_HARD_STOP_S = 570       # hand back whatever still runs
DEFAULT_TRIALS = 40                 # a space file without --trials / --timeout
PICKS = ("knee", "best-quality", "fastest", "smallest-state")

StorageOpt = Annotated[Optional[str], typer.Option(
    "--storage", metavar="URL", show_default=False,
    help="Database URL: sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB "
         "\\[default: $ATTNSEARCH_STORAGE, else sqlite:///attnsearch.db]")]


# ----------------------------------------------------------------------------- errors / output

class UserError(Exception):
    """A mistake in what the user asked for: reported as one line, exit code 2."""


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _scrub(text: str, url: str | None) -> str:
    """Belt and braces: never print a database password, whatever an error message contains."""
    if url:
        try:
            from sqlalchemy.engine import make_url

            password = make_url(url).password
        except Exception:
            password = None
        if password:
            text = text.replace(str(password), "***")
    return text


def _fail(message: str, url: str | None = None, code: int = 2):
    typer.echo(f"Error: {_scrub(_one_line(message), url)}", err=True)
    raise typer.Exit(code)


@contextmanager
def _user_errors(url: str | None = None):
    """Turn the service's ValueErrors (SpaceError, StudyError, StorageError, ConfigError,
    ExportError) and database errors into one-line messages with exit code 2."""
    try:
        yield
    except typer.Exit:
        raise
    except (UserError, ValueError) as exc:
        _fail(str(exc), url)
    except OSError as exc:
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else ""), url)
    except Exception as exc:  # database errors: one line, password scrubbed
        if type(exc).__module__.startswith("sqlalchemy"):
            _fail(f"database error: {getattr(exc, 'orig', None) or exc}", url)
        raise


def _console(stderr: bool = False):
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal:     # piped or captured: wide enough for a table, never cut
        console = Console(stderr=stderr, highlight=False, soft_wrap=True, width=200)
    return console


def _resolve(storage: str | None) -> str:
    """The storage URL to use, a relative SQLite path made absolute: the service caches one
    engine per URL string, and a relative path means another file after a change of directory."""
    from sqlalchemy.engine import make_url

    from attnsearch.storage import resolve_url

    url = resolve_url(storage)
    try:
        parsed = make_url(url)
    except Exception:
        return url          # the storage layer reports the malformed URL
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:" \
            and not Path(parsed.database).is_absolute():
        return parsed.set(database=str(Path(parsed.database).resolve())).render_as_string(hide_password=False)
    return url


def _shown(storage: str | None) -> str:
    """The storage URL as the user gave it (or the default), password hidden, for messages."""
    from attnsearch.storage import redact_url, resolve_url

    return redact_url(resolve_url(storage))


def _existing_storage(storage: str | None) -> str:
    """The URL of a database that must already exist (read commands never create one)."""
    url = _resolve(storage)
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url          # the storage layer reports the malformed URL
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        if not Path(parsed.database).is_file():
            raise UserError(f"no database at {parsed.database!r} (run `attnsearch run` first, "
                            "or pass --storage / set ATTNSEARCH_STORAGE)")
    return url


def _local_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_positive(name: str, value, integer: bool = False):
    if value is None:
        return
    if integer and (value < 1):
        raise UserError(f"{name} must be an integer >= 1, got {value}")
    if not integer and (not math.isfinite(value) or value <= 0):
        raise UserError(f"{name} must be a positive number, got {value}")


# ----------------------------------------------------------------------------- formatting

def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "-"
    for div, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= div:
            return f"{value / div:.3g} {name}"
    return f"{value:.0f} B"


def _metric_text(name: str, value) -> str:
    if value is None:
        return "-"
    if name == "quality":
        return f"{value:.4f}"
    if name == "throughput":
        return _si(value, " tok/s")
    if name == "state_bytes":
        return _bytes(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(max(0.0, seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


def _value(row: dict, name: str):
    values = row.get("values") or {}
    return values.get(name, (row.get("metrics") or {}).get(name))


def trial_table(rows: list[dict], objectives: list[str], title: str, show_all: bool):
    """A rich Table of trial rows: number, layout, objectives, state bytes, baseline marker."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False, pad_edge=False)
    table.add_column("#", justify="right")
    if show_all:
        table.add_column("state")
        table.add_column("front", justify="center")
    table.add_column("layout", no_wrap=True)
    columns = list(objectives) + ([] if "state_bytes" in objectives else ["state_bytes"])
    for name in columns:
        label = {"quality": "quality", "throughput": "throughput", "state_bytes": "state/seq"}.get(name, name)
        table.add_column(label, justify="right")
    table.add_column("baseline")
    if show_all:
        table.add_column("note", overflow="ellipsis", max_width=60)
    for r in rows:
        cells = [str(r["number"])]
        if show_all:
            cells += [r["state"], "*" if r.get("pareto") else ""]
        cells.append(r.get("layout") or "-")
        cells += [_metric_text(n, _value(r, n)) for n in columns]
        cells.append(f"* {r['baseline']}" if r.get("baseline") else "")
        if show_all:
            note = r.get("fail_reason") or (f"same layout as #{r['reused_from']}" if r.get("reused_from") is not None else "")
            cells.append(note or "")
        table.add_row(*cells)
    return table


def _print_front(study: str, url: str, console, show_all: bool = False) -> None:
    from attnsearch.search.table import study_table

    tab = study_table(study, url, every=show_all)
    c = tab.counts
    hv = f"{tab.hypervolume:.4g}" if tab.hypervolume is not None else "-"
    what = "all trials" if show_all else "Pareto front"
    title = (f"{study}: {what} ({c.get('COMPLETE', 0)} complete, {c.get('FAIL', 0)} failed, "
             f"{c.get('PRUNED', 0)} infeasible, {c.get('RUNNING', 0)} running, {c.get('WAITING', 0)} queued; "
             f"front {tab.front_size}, hypervolume {hv})")
    if not tab.rows:
        console.print(f"{title}\n(no completed trial yet)")
        return
    console.print(trial_table(tab.rows, tab.objectives, title, show_all))
    console.print("'* name' marks a literature baseline (gemma3, jamba, ...); layout letters: "
                  "F full, S sliding window, M Mamba-2, Q Gated DeltaNet, G GLA, A linear, "
                  "L Longformer, B BigBird, K block top-k, D dilated, R random, P Performer, "
                  "C cosFormer, T RetNet, N DeltaNet.")


# ----------------------------------------------------------------------------- live progress

class ProgressView:
    """Live progress of a run: trials done / running / failed, elapsed and remaining time,
    front size and hypervolume. A rich Live display on a terminal, one line per trial otherwise."""

    def __init__(self, console, deadline_s: float | None = None):
        self.console = console
        self.deadline_s = deadline_s
        self.t0 = time.monotonic()
        self.progress = None
        self.t_progress = self.t0
        self.live = None

    def __enter__(self):
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        else:
            self.console.print("started; one line per finished trial")
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def eta(self) -> float | None:
        p = self.progress
        eta = None if p is None or p.eta_s is None else max(0.0, p.eta_s - (time.monotonic() - self.t_progress))
        if self.deadline_s is not None:
            left = max(0.0, self.deadline_s - (time.monotonic() - self.t0))
            eta = left if eta is None else min(eta, left)
        return eta

    def parts(self) -> tuple[str, str]:
        """(trial counts, times and front) of the latest progress."""
        p = self.progress
        elapsed = time.monotonic() - self.t0
        if p is None:
            return "starting Ray workers and the study ...", f"elapsed {_duration(elapsed)}"
        budget = f"/{p.n_trials}" if p.n_trials else ""
        hv = f"{p.hypervolume:.4g}" if p.hypervolume is not None else "-"
        return (f"trials {p.counted}{budget}: done {p.complete} (reused {p.reused}), running {p.running}, "
                f"failed {p.failed}, infeasible {p.pruned}",
                f"elapsed {_duration(elapsed)}, ETA {_duration(self.eta())} | front {p.front_size}, "
                f"hypervolume {hv}")

    def line(self) -> str:
        return " | ".join(self.parts())

    def last_line(self) -> str:
        last = (self.progress.last if self.progress else None) or {}
        if not last:
            return ""
        metrics = last.get("metrics") or {}
        values = ", ".join(f"{k} {_metric_text(k, v)}" for k, v in metrics.items() if v is not None)
        tail = values if last.get("state") == "COMPLETE" else (last.get("reason") or "")
        return f"last: trial #{last.get('number')} {last.get('state')} {last.get('layout') or ''} {tail}".rstrip()

    def __rich__(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        p = self.progress
        rows = []
        if p is not None and p.n_trials:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=p.n_trials, completed=min(p.counted, p.n_trials), width=40),
                        Text(f"{min(p.counted, p.n_trials)}/{p.n_trials} trials"))
            rows.append(bar)
        rows += [Text(part, overflow="fold") for part in self.parts()]
        if self.last_line():
            rows.append(Text(self.last_line(), style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*rows)

    def __call__(self, progress) -> None:
        self.progress = progress
        self.t_progress = time.monotonic()
        if self.live is None:
            self.console.print(self.line())
            if self.last_line():
                self.console.print("  " + self.last_line())
            self.console.file.flush()       # a log file sees each trial as it ends


class _GracefulInterrupt:
    """Ctrl-C during a run: the first one asks the driver to stop at its next safe point (it then
    hands running trials back to the study); a second one interrupts at once."""

    def __init__(self):
        self.hits = 0
        self._previous = None

    def __call__(self, signum, frame):
        self.hits += 1
        if self.hits > 1:
            raise KeyboardInterrupt
        sys.stderr.write("\nStopping: handing running trials back to the study (Ctrl-C again to force)\n")

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self)
        return self

    def __exit__(self, *exc):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


# ----------------------------------------------------------------------------- commands

def _version(value: bool):
    if value:
        typer.echo(f"attnsearch {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                         help="Print the version and exit.")] = None):
    """attnsearch: per-layer attention layouts on the quality-throughput Pareto front.

    Start with [bold]attnsearch run[/bold] (no arguments: a small built-in study on the CPU).
    """


@app.command()
def version():
    """Print the version."""
    typer.echo(f"attnsearch {__version__}")


def _zero_config_space():
    """The built-in space, with the test-only proxy override ``ATTNSEARCH_ZERO_CONFIG_PROXY``
    (JSON fields of the proxy spec, e.g. a few training steps) when it is set."""
    from attnsearch import search

    space = search.default_space()
    override = os.environ.get("ATTNSEARCH_ZERO_CONFIG_PROXY")
    if override:
        try:
            extra = json.loads(override)
        except json.JSONDecodeError as exc:
            raise UserError(f"ATTNSEARCH_ZERO_CONFIG_PROXY: malformed JSON ({exc.msg})") from None
        if not isinstance(extra, dict):
            raise UserError("ATTNSEARCH_ZERO_CONFIG_PROXY: must be a JSON object of proxy fields")
        data = space.to_dict()
        data["proxy"] = {**data.get("proxy", {}), **extra}
        space = search.load_space(data)
    return space


def _zero_config_trials() -> int:
    raw = os.environ.get("ATTNSEARCH_ZERO_CONFIG_TRIALS")
    if not raw:
        return ZERO_CONFIG_TRIALS
    if not raw.isdigit() or int(raw) < 1:
        raise UserError(f"ATTNSEARCH_ZERO_CONFIG_TRIALS: must be an integer >= 1, got {raw!r}")
    return int(raw)


def _space_summary(space) -> str:
    t = space.target
    mechs = ", ".join(space.mechanisms)
    return (f"space {space.source}: {len(space.mechanisms)} mechanisms ({mechs}), layout {space.layout_mode}; "
            f"target d_model {t.d_model} x {t.n_layers} layers, context {t.context_len}, {t.gpu} {t.dtype}; "
            f"objectives {', '.join(space.objective_names)}")


def _rerun_command(space: Optional[Path], study: str, storage: Optional[str], trials: Optional[int]) -> str:
    from attnsearch.storage import redact_url

    parts = ["attnsearch run"]
    if space is not None:
        parts.append(str(space))
    if space is not None or study != DEFAULT_STUDY:
        parts.append(f"--study {study}")
    if storage:
        parts.append(f"--storage '{redact_url(storage)}'")
    if trials:
        parts.append(f"--trials {trials}")
    return " ".join(parts)


def _storage_flag(storage: Optional[str]) -> str:
    from attnsearch.storage import redact_url

    return f" --storage '{redact_url(storage)}'" if storage else ""


@app.command()
def run(
    space: Annotated[Optional[Path], typer.Argument(
        show_default=False, help="Space file (YAML/JSON; see `attnsearch init`). Omitted: the built-in "
                                 "CPU space, a small budget, done within 10 minutes on 2 cores.")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (created, or resumed if it exists) "
                                                 "\\[default: 'default' for the built-in space, else the file's stem]",
                                                 show_default=False)] = None,
    storage: StorageOpt = None,
    trials: Annotated[Optional[int], typer.Option("--trials", show_default=False,
                                                  help="Trial budget of the whole study (resuming counts what "
                                                       f"is done) \\[default: {DEFAULT_TRIALS}; built-in: "
                                                       f"{ZERO_CONFIG_TRIALS}]")] = None,
    timeout: Annotated[Optional[float], typer.Option("--timeout", metavar="SECONDS", show_default=False,
                                                     help="Stop starting trials after this many seconds.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", show_default=False,
                                                   help="Trials in flight at once (Ray tasks) \\[default: 2 on "
                                                        "the built-in space, else 1]")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", metavar="ADDR", show_default=False,
                                                       help="Join a running Ray cluster (e.g. auto or "
                                                            "HEAD:6379); default: a local one.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where proxies train: cpu or cuda.")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help="Continue a study that was made with a different "
                                                          "space (default: refuse).")] = False,
    check: Annotated[bool, typer.Option("--check", help="Validate the space and stop (nothing is "
                                                        "trained or written).")] = False,
):
    """Run (or resume) a study. With no arguments: the built-in study on the CPU with SQLite."""
    from attnsearch import search

    console = _console()
    url = None
    with _user_errors(storage or os.environ.get("ATTNSEARCH_STORAGE")):
        _check_positive("--trials", trials, integer=True)
        _check_positive("--workers", workers, integer=True)
        _check_positive("--timeout", timeout)
        if device not in ("cpu", "cuda"):
            raise UserError(f"--device: {device!r} not allowed (allowed: cpu, cuda)")
        if device == "cuda" and not ray_address and not _local_cuda():
            # refused before the study is created (the driver would refuse it after)
            raise UserError("--device cuda: this machine has no CUDA GPU; use --device cpu, or "
                            "--ray-address of a Ray cluster with GPUs")
        zero_config = space is None
        if zero_config:
            loaded = _zero_config_space()
            study = study or DEFAULT_STUDY
            n_trials = trials or (None if timeout else _zero_config_trials())
            n_workers = workers or max(1, min(2, os.cpu_count() or 1))
            ask_until = timeout or ZERO_CONFIG_ASK_UNTIL_S
            hard_stop = None if (trials or timeout) else ZERO_CONFIG_HARD_STOP_S
        else:
            loaded = search.load_space(space)
            study = study or space.stem
            n_trials = trials or (None if timeout else DEFAULT_TRIALS)
            n_workers = workers or 1
            ask_until = timeout
            hard_stop = None
        if check:
            console.print(f"OK: {_space_summary(loaded)}")
            baselines = [name for name, _p, _a in loaded.baselines(search.throughput_fn(loaded))]
            console.print(f"baselines that fit: {', '.join(baselines) or 'none'}")
            return
        url = _resolve(storage)
        # create (or check) the study first: a study made with another space is refused here,
        # before Ray starts; the dashboard note is written once it exists
        from attnsearch.search.dashboard import write_study_note
        from attnsearch.search.study import create_or_load

        create_or_load(loaded, study, url, workers=n_workers, allow_space_change=resume)
        write_study_note(study, url)
        console.print(f"study [bold]{study}[/bold] in {_shown(storage)}")
        console.print(_space_summary(loaded))
        budget = f"{n_trials} trials" if n_trials else "no trial cap"
        limit = f", new trials until {_duration(ask_until)}" if ask_until else ""
        hard = f", hard stop at {_duration(hard_stop)}" if hard_stop else ""
        console.print(f"budget: {budget}{limit}{hard}; {n_workers} worker(s) on {device}; Ctrl-C stops cleanly")

        t0 = time.monotonic()
        interrupt = _GracefulInterrupt()

        def should_stop() -> bool:
            return interrupt.hits > 0 or (hard_stop is not None and time.monotonic() - t0 >= hard_stop)

        try:
            with interrupt, ProgressView(console, deadline_s=hard_stop) as view:
                result = search.run_study(loaded, study, url, n_trials=n_trials, timeout=ask_until,
                                          workers=n_workers, ray_address=ray_address, device=device,
                                          progress_callback=view, allow_space_change=resume,
                                          should_stop=should_stop)
        except KeyboardInterrupt:
            result = None
        rerun = _rerun_command(space, study, storage, trials)
        if result is None or result.stop_reason == "interrupted" or interrupt.hits:
            console.print(f"\nInterrupted: stopped cleanly; running trials were handed back to the study.\n"
                          f"Resume with: {rerun}")
            if result is not None:
                _print_front(study, url, console)
            raise typer.Exit(130)
        reasons = {"budget": "trial budget reached", "timeout": "time limit reached",
                   "stagnation": "hypervolume stopped improving", "stopped": "time cap reached",
                   "exhausted": "the sampler only proposes infeasible layouts", "error": "stopped by an error"}
        console.print(f"\nfinished in {_duration(result.wall_s)}: {reasons.get(result.stop_reason, result.stop_reason)}; "
                      f"{result.complete} complete ({result.reused} reused), {result.failed} failed, "
                      f"{result.pruned} infeasible this run")
        if not result.trials_run and result.stop_reason == "budget":
            console.print(f"study {study!r} already has its {n_trials} trials; pass --trials N (study-wide) "
                          "to run more")
        if result.stop_reason in ("stopped", "timeout") and n_trials:
            console.print(f"unfinished budget: continue with: {rerun}")
        console.print()
        _print_front(study, url, console)
        flag = _storage_flag(storage)
        console.print(f"\nNext:\n  attnsearch show {study} --all{flag}\n  attnsearch dashboard{flag}"
                      f"      (http://127.0.0.1:8080)\n  attnsearch export {study} --pick knee --out best.json{flag}"
                      f"\n  attnsearch plot {study} --out pareto.png{flag}")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter space file.")] = Path("space.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
):
    """Write a commented starter space file that documents every field."""
    from attnsearch.space.starter import write_starter

    with _user_errors():
        out = write_starter(path, overwrite=force)
    typer.echo(f"wrote {out}; edit it, then: attnsearch run {out} --study my-study")


@app.command()
def studies(storage: StorageOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False):
    """List the studies in the database."""
    from rich.table import Table

    from attnsearch import search

    with _user_errors(storage):
        url = _existing_storage(storage)
        items = search.list_studies(url)
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return
    if not items:
        typer.echo(f"no studies in {_shown(storage)}")
        return
    table = Table(title=f"studies in {_shown(storage)}", title_justify="left")
    for col in ("name", "trials", "objectives", "created"):
        table.add_column(col)
    for s in items:
        objectives = ", ".join(f"{o} ({d[:3]})" for o, d in zip(s.get("objectives") or [], s["directions"]))
        table.add_row(s["name"], str(s["n_trials"]), objectives, (s.get("created_at") or "")[:19])
    _console().print(table)


@app.command()
def show(study: Annotated[str, typer.Argument(help="Study name.")],
         storage: StorageOpt = None,
         all_trials: Annotated[bool, typer.Option("--all", help="Every trial, not only the Pareto front.")] = False,
         as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False):
    """The Pareto trials of a study as a table (layout, metrics, baseline marker)."""
    with _user_errors(storage):
        url = _existing_storage(storage)
        if as_json:
            from attnsearch.search.table import study_table

            rows = study_table(study, url, every=all_trials, heavy=True).rows
            typer.echo(json.dumps(rows, indent=1, default=str))
            return
        _print_front(study, url, _console(), show_all=all_trials)


@app.command()
def delete(study: Annotated[str, typer.Argument(help="Study name.")],
           storage: StorageOpt = None,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False):
    """Delete a study and its trials (asks first)."""
    from attnsearch import search

    with _user_errors(storage):
        url = _existing_storage(storage)
        summary = search.load_study_summary(study, url)
        if not yes and not typer.confirm(f"Delete study {study!r} with {summary.n_trials} trials from "
                                         f"{_shown(storage)}?", default=False):
            typer.echo("kept; nothing deleted")
            raise typer.Exit(1)
        search.delete_study(study, url)
    typer.echo(f"deleted study {study!r} ({summary.n_trials} trials)")


@app.command()
def export(
    study: Annotated[Optional[str], typer.Argument(help="Study name.", show_default=False)] = None,
    pick: Annotated[str, typer.Option("--pick", help="knee | best-quality | fastest | smallest-state")] = "knee",
    min_throughput: Annotated[Optional[float], typer.Option("--min-throughput", metavar="TOK/S",
                                                            show_default=False,
                                                            help="Only trials at least this fast.")] = None,
    max_state_bytes: Annotated[Optional[float], typer.Option("--max-state-bytes", metavar="BYTES",
                                                             show_default=False,
                                                             help="Only trials with at most this much "
                                                                  "inference state per sequence.")] = None,
    trial: Annotated[Optional[int], typer.Option("--trial", metavar="N", show_default=False,
                                                 help="Export this trial instead of picking.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Output JSON file.")] = Path("best.json"),
    check: Annotated[Optional[Path], typer.Option("--check", metavar="FILE", show_default=False,
                                                  help="Validate an exported (or ArchConfig) JSON file "
                                                       "and stop.")] = None,
    include_paths: Annotated[bool, typer.Option("--include-paths", help="Keep absolute local paths "
                                                                        "(database file, space file) "
                                                                        "in the provenance.")] = False,
    storage: StorageOpt = None,
):
    """Export a trial as JSON that builds the model: attnsearch.models.build_model("best.json")."""
    from attnsearch.search import export as ex

    with _user_errors(storage):
        if check is not None:
            arch = ex.load_export(check)
            typer.echo(f"OK: {check}: {arch.n_layers} layers, layout {arch.layout_string()}, "
                       f"d_model {arch.d_model}, {arch.n_heads} heads")
            return
        if study is None:
            raise UserError("give the STUDY to export (or --check FILE to validate a file)")
        if pick not in PICKS:
            raise UserError(f"--pick: {pick!r} not allowed (allowed: {', '.join(PICKS)})")
        _check_positive("--min-throughput", min_throughput)
        _check_positive("--max-state-bytes", max_state_bytes)
        if trial is not None and trial < 0:
            raise UserError(f"--trial must be a trial number >= 0, got {trial}")
        url = _existing_storage(storage)
        doc = ex.export_trial(study, url, policy=pick, min_throughput=min_throughput,
                              max_state_bytes=max_state_bytes, trial_number=trial, include_paths=include_paths)
        path = ex.write_export(doc, out)
    metrics = ", ".join(f"{k} {_metric_text(k, doc['metrics'].get(k))}" for k in doc["objectives"])
    how = f"trial {trial}" if trial is not None else f"--pick {pick}"
    typer.echo(f"wrote {path}: trial #{doc['provenance']['trial']} ({how}), layout {doc['layout']}, {metrics}")
    typer.echo(f'load it: from attnsearch.models import build_model; model = build_model("{path}")')


@app.command()
def plot(study: Annotated[str, typer.Argument(help="Study name.")],
         out: Annotated[Path, typer.Option("--out", help="Image file (.png, .svg or .pdf).")] = Path("pareto.png"),
         storage: StorageOpt = None):
    """Plot the Pareto front, the dominated trials, the baselines and the hypervolume history."""
    from attnsearch.search.plots import plot_study

    with _user_errors(storage):
        url = _existing_storage(storage)
        path = plot_study(study, url, out)
    typer.echo(f"wrote {path}")


@app.command()
def dashboard(storage: StorageOpt = None,
              host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to "
                                                              "the network (no authentication).")] = "127.0.0.1",
              port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080):
    """Serve optuna-dashboard on the study database (local only unless --host says otherwise)."""
    from attnsearch.search.dashboard import binds_everywhere, serve

    with _user_errors(storage):
        if not 1 <= port <= 65535:
            raise UserError(f"--port must be in 1..65535, got {port}")
        url = _existing_storage(storage)
        if binds_everywhere(host):
            typer.echo(f"Warning: binding to {host} makes the dashboard (which can also delete studies) "
                       "reachable from every network this machine is on, with no authentication.", err=True)
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"optuna-dashboard on {_shown(storage)} at http://{shown}:{port}/ (Ctrl-C to stop)")
        try:
            serve(url, host=host, port=port)
        except KeyboardInterrupt:
            typer.echo("dashboard stopped")
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


from .cli_tune import register as _register_tune; _register_tune(app)  # noqa: E402,E702 - cache list|clear, tune (issue 8)

if __name__ == "__main__":  # pragma: no cover
    app()
