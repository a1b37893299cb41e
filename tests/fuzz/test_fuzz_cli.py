"""CLI argument combinations (typer.testing.CliRunner): every command line ends in success or a
clear error (exit code 2, or 1 for a declined confirmation), never a traceback, and never a
partially written study: a command that fails leaves the database as it was (byte-for-byte
rows) and creates no database file; one that succeeds leaves no trial RUNNING.

`run` scores with the synthetic evaluation and tiny default budgets (monkeypatched), and
`dashboard` does not really serve, so a valid combination finishes in seconds.
"""
from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fuzz_inputs import OUTCOMES, TRIED

STUDY = "fz"
GOOD_SPACE = """\
target: {d_model: 256, n_layers: 4, n_heads: 4, head_dim: 64, vocab_size: 1000, context_len: 4096}
mechanisms: {full: {}, sliding_window: {window: [256, 1024]}, mamba2: {}}
layout: {mode: per_layer}
sampler: {name: random, seed: 1}
"""


@pytest.fixture(scope="module")
def seed_db(tmp_path_factory):
    """A small finished study to read, export, plot and delete."""
    import ray

    from attnsearch import search
    from attnsearch.search.testing import synthetic_evaluate

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    path = tmp_path_factory.mktemp("fuzzcli") / "seed.db"
    search.run_study(search.load_space(_write(path.parent / "good.yaml", GOOD_SPACE)), STUDY, f"sqlite:///{path}",
                     n_trials=4, workers=2, evaluate=synthetic_evaluate)
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _digest(path: Path) -> str | None:
    if not path.exists():
        return None
    with sqlite3.connect(path) as conn:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()


def _running(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        try:
            return conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0]
        except sqlite3.OperationalError:      # no Optuna tables (nothing was run)
            return 0


# ----------------------------------------------------------------------------- argument strategies

numbers = st.sampled_from(["-1", "0", "1", "2", "3", "1.5", "abc", "", "nan", "inf", "-inf", "1e-9",
                           "99999999999999999999", "0x10", " 2"])
names = st.sampled_from([STUDY, STUDY, STUDY, "nope", "", " ", "x" * 300, "ü-名前", "--all", "a/b", "'; DROP TABLE studies;--"])
storages = st.sampled_from(["DB", "DB", "sqlite:///missing.db", "sqlite://", "sqlite:///", "garbage",
                            "mysql://u:pw@localhost/db", "postgresql://u:pw@127.0.0.1:1/db",
                            "postgresql+psycopg://u:s3cret@127.0.0.1:1/db", "sqlite:////no/such/dir/x.db", ""])
# a run with a long timeout and no trial cap is a legitimately long run: not drawn
run_timeouts = st.sampled_from(["-1", "0", "abc", "", "nan", "inf", "-inf", "1e-9", "0.5", "2", "0x10"])
files = st.sampled_from(["good.yaml", "bad.yaml", "missing.yaml", ".", "empty.yaml", "arch.json", "bad.json",
                         "best.json", "out/x.json", "x.png", "x.txt", "dir/"])


def _opt(flag, strategy):
    return st.tuples(st.just(flag), strategy).map(list)


def _flag(flag):
    return st.just([flag])


def _options(*pairs):
    return st.lists(st.one_of(*pairs), max_size=4).map(lambda chunks: [a for c in chunks for a in c])


COMMANDS = {
    "run": st.tuples(st.just(["run"]), st.one_of(st.just([]), files.map(lambda f: [f])),
                     _options(_opt("--study", names), _opt("--trials", numbers), _opt("--timeout", run_timeouts),
                              _opt("--workers", numbers), _opt("--device", st.sampled_from(["cpu", "cuda", "tpu", ""])),
                              _opt("--storage", storages), _flag("--check"), _flag("--resume"))),
    "studies": st.tuples(st.just(["studies"]), st.just([]), _options(_opt("--storage", storages), _flag("--json"))),
    "show": st.tuples(st.just(["show"]), st.one_of(st.just([]), names.map(lambda n: [n])),
                      _options(_opt("--storage", storages), _flag("--all"), _flag("--json"))),
    "export": st.tuples(st.just(["export"]), st.one_of(st.just([]), names.map(lambda n: [n])),
                        _options(_opt("--pick", st.sampled_from(["knee", "fastest", "best-quality", "smallest-state",
                                                                 "bogus", ""])),
                                 _opt("--min-throughput", numbers), _opt("--max-state-bytes", numbers),
                                 _opt("--trial", numbers), _opt("--out", files), _opt("--check", files),
                                 _opt("--storage", storages), _flag("--include-paths"))),
    "delete": st.tuples(st.just(["delete"]), st.one_of(st.just([]), names.map(lambda n: [n])),
                        _options(_opt("--storage", storages), _flag("--yes"))),
    "plot": st.tuples(st.just(["plot"]), st.one_of(st.just([]), names.map(lambda n: [n])),
                      _options(_opt("--out", files), _opt("--storage", storages))),
    "dashboard": st.tuples(st.just(["dashboard"]), st.just([]),
                           _options(_opt("--port", numbers), _opt("--host", st.sampled_from(["127.0.0.1", "0.0.0.0",
                                                                                             "::", "bad host"])),
                                    _opt("--storage", storages))),
    "init": st.tuples(st.just(["init"]), st.one_of(st.just([]), files.map(lambda f: [f])),
                      _options(_flag("--force"))),
    "misc": st.tuples(st.sampled_from([["version"], ["--version"], ["--help"], ["nosuchcommand"], []]),
                      st.just([]), st.lists(st.sampled_from(["--bogus", "-x", "--storage", "--", "x"]), max_size=2)),
}


# valid combinations tried on top of the drawn ones, so every command's success path is checked
# (each tuple: the parts, use $ATTNSEARCH_STORAGE)
VALID = {
    "run": [((["run"], ["good.yaml"], ["--trials", "2", "--storage", "DB", "--study", "new"]), False),
            ((["run"], ["good.yaml"], ["--check"]), False)],
    "studies": [((["studies"], [], ["--json"]), True)],
    "show": [((["show"], [STUDY], ["--all"]), True), ((["show"], [STUDY], ["--json", "--storage", "DB"]), False)],
    "export": [((["export"], [STUDY], ["--out", "best.json"]), True),
               ((["export"], [], ["--check", "arch.json"]), False)],
    "delete": [((["delete"], [STUDY], ["--yes"]), True)],
    "plot": [((["plot"], [STUDY], ["--out", "x.png"]), True)],
    "dashboard": [((["dashboard"], [], ["--port", "8080"]), True)],
    "init": [((["init"], ["new.yaml"], []), False)],
    "misc": [((["version"], [], []), False)],
}


def _setup_folder(seed_db: Path) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fz-", dir=seed_db.parent))
    with sqlite3.connect(seed_db) as a, sqlite3.connect(folder / "study.db") as b:
        a.backup(b)
    _write(folder / "good.yaml", GOOD_SPACE)
    _write(folder / "bad.yaml", "target: [1, 2\n")
    _write(folder / "empty.yaml", "")
    _write(folder / "bad.json", "{\"d_model\": 64, ")
    _write(folder / "arch.json", '{"d_model": 64, "n_layers": 1, "n_heads": 2, "head_dim": 32, "layers": ["full"]}')
    (folder / "dir").mkdir()
    return folder


def _fixup(args: list[str], folder: Path) -> list[str]:
    return [f"sqlite:///{folder / 'study.db'}" if a == "DB" else a for a in args]


@pytest.fixture
def quick_cli(monkeypatch, seed_db):
    """The CLI with the synthetic evaluation, 2-trial default budgets and a dashboard that only
    records what it would serve."""
    import attnsearch.cli as cli
    import attnsearch.search.dashboard as dash
    import attnsearch.search.driver as driver
    from attnsearch.search.testing import synthetic_evaluate

    monkeypatch.setattr(driver, "evaluate_architecture", functools.partial(synthetic_evaluate, sleep_s=0.0))
    monkeypatch.setattr(cli, "DEFAULT_TRIALS", 2)
    monkeypatch.setattr(cli, "ZERO_CONFIG_TRIALS", 2)
    served = []
    monkeypatch.setattr(dash, "serve", lambda url, host="127.0.0.1", port=8080: served.append((host, port)))
    monkeypatch.delenv("ATTNSEARCH_STORAGE", raising=False)
    return cli.app


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_fuzz_cli_arguments(quick_cli, seed_db, command):
    runner = CliRunner()
    cwd = os.getcwd()

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
    @given(parts=COMMANDS[command], env_storage=st.booleans())
    def run(parts, env_storage):
        check(parts, env_storage)

    for parts, env_storage in VALID[command]:
        run = example(parts=parts, env_storage=env_storage)(run)

    def check(parts, env_storage):
        folder = _setup_folder(seed_db)
        args = _fixup([a for part in parts for a in part], folder)
        TRIED[f"CLI `{command}` argument combinations"] += 1
        before = _digest(folder / "study.db")
        os.chdir(folder)
        t0 = time.monotonic()
        try:
            env = {"ATTNSEARCH_STORAGE": f"sqlite:///{folder / 'study.db'}"} if env_storage else None
            result = runner.invoke(quick_cli, args, input="n\n", env=env)
        finally:
            os.chdir(cwd)
        if os.environ.get("FUZZ_SLOW") and time.monotonic() - t0 > 3:
            print(f"SLOW {time.monotonic() - t0:.1f}s: {args}", flush=True)
        OUTCOMES[f"CLI `{command}` exit {result.exit_code}"] += 1
        shown = f"attnsearch {' '.join(args)}\n{result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            f"{shown}\n{type(result.exception).__name__}: {result.exception}"
        assert "Traceback" not in result.output, shown
        assert result.exit_code in (0, 1, 2), shown
        if result.exit_code == 1:          # only a declined confirmation ends with 1
            assert "nothing deleted" in result.output, shown
        if result.exit_code == 2 and "Usage:" not in result.output:
            err = result.stderr.strip()
            assert err.startswith("Error: ") and len(err.splitlines()) == 1, shown
        if result.exit_code != 0 or command != "run":
            # a failed command (or one that only reads) leaves the database as it was
            if not (command in ("delete",) and result.exit_code == 0):
                assert _digest(folder / "study.db") == before, shown
            assert not (folder / "attnsearch.db").exists() or command == "run" and result.exit_code == 0, shown
            assert not (folder / "missing.db").exists(), shown
        else:
            for db in folder.glob("*.db"):
                assert _running(db) == 0, shown
        if (parts, env_storage) in VALID[command]:
            assert result.exit_code == 0, shown
    run()
