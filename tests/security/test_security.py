"""Security basics: space files never run code, no eval/pickle/unsafe YAML of user input in the
package, the dashboard listens on 127.0.0.1 unless asked, a database password never shows in
output, errors, logs or exported JSON, and exports carry no absolute local paths unless asked."""
from __future__ import annotations

import ast
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

import attnsearch
from attnsearch import search
from attnsearch.cli import app

PACKAGE = Path(attnsearch.__file__).parent
PASSWORD = "Pw-9f3kq7Zx"            # distinctive: found nowhere else in any output
SPACE = """\
target: {d_model: 256, n_layers: 4, n_heads: 4, head_dim: 64, vocab_size: 1000, context_len: 4096}
mechanisms: {full: {}, sliding_window: {window: [256, 1024]}, mamba2: {}}
layout: {mode: per_layer}
sampler: {name: random, seed: 2}
"""


def invoke(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


# ----------------------------------------------------------------------------- code execution

@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
    "!!python/object/new:os.system ['touch {marker}']",
    "!!python/name:os.system",
    "!!python/module:os",
])
def test_space_files_never_execute_code(tmp_path, monkeypatch, payload):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    evil = SPACE + f"proxy: {payload.format(marker=marker)}\n"
    path = tmp_path / "evil.yaml"
    path.write_text(evil)
    with pytest.raises(search.SpaceError) as err:
        search.load_space(path)
    assert "\n" not in str(err.value)
    result = invoke("run", path, "--trials", 1)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("Error: ") and "evil.yaml" in result.output
    assert not marker.exists()                           # nothing ran
    assert not (tmp_path / "attnsearch.db").exists()     # nothing written


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else (
                f"{getattr(f.value, 'id', '?')}.{f.attr}" if isinstance(f, ast.Attribute) else "?")
            yield name, node


def _unsafe(name: str, node: ast.Call) -> str | None:
    kwargs = {k.arg: k.value for k in node.keywords}
    if name in ("eval", "exec", "compile", "__import__"):
        return f"{name}() of a string"
    if name in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads", "marshal.loads",
                "dill.load", "dill.loads", "shelve.open", "yaml.unsafe_load", "yaml.full_load",
                "yaml.unsafe_load_all", "yaml.full_load_all"):
        return name
    if name in ("yaml.load", "yaml.load_all"):
        loader = kwargs.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
        if not (isinstance(loader, ast.Attribute) and loader.attr in ("SafeLoader", "CSafeLoader")):
            return f"{name} without SafeLoader"
    if name == "torch.load":
        w = kwargs.get("weights_only")
        if not (isinstance(w, ast.Constant) and w.value is True):
            return "torch.load without weights_only=True (unpickles)"
    if "shell" in kwargs and isinstance(kwargs["shell"], ast.Constant) and kwargs["shell"].value:
        return f"{name}(shell=True)"
    return None


def test_package_has_no_eval_pickle_or_unsafe_yaml():
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20
    found = []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, node in _calls(tree):
            why = _unsafe(name, node)
            if why:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {why}")
    assert not found, "\n".join(found)


def test_the_checker_would_catch_them():
    bad = ("eval(text)\nexec(code)\npickle.loads(blob)\nyaml.load(text)\nyaml.load(t, Loader=yaml.Loader)\n"
           "yaml.unsafe_load(t)\ntorch.load(p)\nsubprocess.run(c, shell=True)\n")
    good = "yaml.safe_load(t)\nyaml.load(t, Loader=yaml.SafeLoader)\ntorch.load(p, weights_only=True)\nmodel.eval()\n"
    assert sum(_unsafe(n, c) is not None for n, c in _calls(ast.parse(bad))) == 8
    assert not [n for n, c in _calls(ast.parse(good)) if _unsafe(n, c)]


# ----------------------------------------------------------------------------- dashboard binding

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_binds_to_localhost_by_default(tmp_path, monkeypatch):
    import attnsearch.search.dashboard as dash

    db = tmp_path / "d.db"
    url = f"sqlite:///{db}"
    search.study.create_or_load(_space(tmp_path), "s", url)
    seen = []
    monkeypatch.setattr(dash, "serve", lambda u, host="127.0.0.1", port=8080: seen.append(host))
    assert invoke("dashboard", "--storage", url).exit_code == 0
    assert seen == ["127.0.0.1"]
    result = invoke("dashboard", "--storage", url, "--host", "0.0.0.0")
    assert seen[-1] == "0.0.0.0" and "Warning" in result.stderr and "authentication" in result.stderr


def test_dashboard_server_really_listens_on_loopback_only(tmp_path):
    """The real optuna-dashboard server, started as the CLI starts it, listens on 127.0.0.1."""
    import psutil

    from attnsearch.search.dashboard import serve

    url = f"sqlite:///{tmp_path / 'd.db'}"
    search.study.create_or_load(_space(tmp_path), "s", url)
    port = _free_port()
    threading.Thread(target=serve, args=(url,), kwargs={"port": port}, daemon=True).start()
    deadline = time.monotonic() + 60
    listening = []
    while time.monotonic() < deadline and not listening:
        listening = [c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
        time.sleep(0.2)
    assert listening == ["127.0.0.1"]
    with pytest.raises(OSError):                          # not reachable on another interface address
        ip = _non_loopback_ip()
        if ip is None:
            raise OSError("no other interface: trivially unreachable")
        socket.create_connection((ip, port), timeout=2).close()


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))                   # TEST-NET: no packet is sent for UDP connect
            ip = s.getsockname()[0]
        return None if ip.startswith("127.") else ip
    except OSError:
        return None


def _space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return search.load_space(path)


# ----------------------------------------------------------------------------- passwords

def _assert_no_password(*texts):
    for text in texts:
        assert PASSWORD not in str(text), str(text)[:2000]


@pytest.mark.parametrize("command", [["studies"], ["show", "s"], ["show", "s", "--json"], ["export", "s"],
                                     ["delete", "s", "--yes"], ["plot", "s"], ["dashboard"]])
def test_password_of_an_unreachable_server_never_printed(tmp_path, monkeypatch, caplog, command):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    url = f"postgresql+psycopg://someone:{PASSWORD}@127.0.0.1:1/nowhere"
    result = invoke(*command, "--storage", url)
    assert result.exit_code == 2 and result.stderr.startswith("Error: "), result.output
    assert "***" in result.output
    _assert_no_password(result.output, caplog.text)
    with pytest.raises(search.StorageError) as err:
        search.list_studies(url)
    _assert_no_password(err.value, repr(err.value))
    # the environment variable path too
    result = invoke(*command, env={"ATTNSEARCH_STORAGE": url})
    assert result.exit_code == 2
    _assert_no_password(result.output)


@pytest.fixture(scope="module")
def pg_password_url():
    """A PostgreSQL role whose password is PASSWORD, with its own database (made through the CI
    superuser URL)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    admin = os.environ.get("ATTNSEARCH_TEST_PG_URL")
    if not admin:
        if os.environ.get("CI"):
            pytest.fail("CI is set but ATTNSEARCH_TEST_PG_URL is not")
        pytest.skip("ATTNSEARCH_TEST_PG_URL not set (PostgreSQL tests run in CI)")
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if not conn.scalar(sa.text("SELECT 1 FROM pg_roles WHERE rolname = 'attnsearch_sec'")):
            conn.execute(sa.text(f"CREATE ROLE attnsearch_sec LOGIN PASSWORD '{PASSWORD}'"))
        if not conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = 'attnsearch_sec'")):
            conn.execute(sa.text("CREATE DATABASE attnsearch_sec OWNER attnsearch_sec"))
    engine.dispose()
    base = make_url(admin)
    return base.set(username="attnsearch_sec", password=PASSWORD,
                    database="attnsearch_sec").render_as_string(hide_password=False)


@pytest.mark.postgres
def test_wrong_password_error_does_not_echo_it(pg_password_url, caplog):
    from sqlalchemy.engine import make_url

    caplog.set_level(logging.DEBUG)
    wrong = make_url(pg_password_url).set(password=PASSWORD + "-wrong").render_as_string(hide_password=False)
    result = invoke("studies", "--storage", wrong)
    assert result.exit_code == 2 and "password authentication failed" in result.output, result.output
    _assert_no_password(result.output, caplog.text)
    with pytest.raises(search.StorageError) as err:
        search.list_studies(wrong)
    _assert_no_password(err.value)


@pytest.mark.postgres
def test_password_never_in_output_logs_or_exports(pg_password_url, tmp_path, monkeypatch, caplog, capfd):
    import ray

    from attnsearch.search.testing import synthetic_evaluate

    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.DEBUG)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    name = f"sec-{uuid.uuid4().hex[:8]}"
    events = []
    result = search.run_study(_space(tmp_path), name, pg_password_url, n_trials=3, workers=2,
                              evaluate=synthetic_evaluate, progress_callback=events.append)
    assert result.complete == 3
    outputs = [invoke("studies", "--storage", pg_password_url), invoke("studies", "--json", "--storage", pg_password_url),
               invoke("show", name, "--all", "--storage", pg_password_url),
               invoke("show", name, "--json", "--all", "--storage", pg_password_url),
               invoke("export", name, "--out", tmp_path / "best.json", "--storage", pg_password_url),
               invoke("export", name, "--out", tmp_path / "paths.json", "--include-paths",
                      "--storage", pg_password_url),
               invoke("show", "no-such-study", "--storage", pg_password_url)]
    assert [r.exit_code for r in outputs] == [0, 0, 0, 0, 0, 0, 2], [r.output for r in outputs]
    exported = (tmp_path / "best.json").read_text() + (tmp_path / "paths.json").read_text()
    assert "attnsearch_sec" in exported               # the storage is named, its password is not
    summary = search.load_study_summary(name, pg_password_url)
    attrs = search.study.load_study(name, pg_password_url).user_attrs
    out, err = capfd.readouterr()
    _assert_no_password(*[r.output for r in outputs], exported, caplog.text, out, err, summary, json.dumps(attrs),
                        [e.__dict__ for e in events])
    search.delete_study(name, pg_password_url)


# ----------------------------------------------------------------------------- local paths in exports

def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_export_has_no_absolute_local_paths_unless_asked(tmp_path, monkeypatch):
    import ray

    from attnsearch.search.testing import synthetic_evaluate

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "deep" / "folder" / "study.db"
    db.parent.mkdir(parents=True)
    url = f"sqlite:///{db}"
    space_file = tmp_path / "deep" / "space.yaml"
    space_file.write_text(SPACE)
    search.run_study(search.load_space(space_file), "s", url, n_trials=3, workers=2, evaluate=synthetic_evaluate)
    assert invoke("export", "s", "--out", tmp_path / "plain.json", "--storage", url).exit_code == 0
    assert invoke("export", "s", "--out", tmp_path / "paths.json", "--include-paths", "--storage", url).exit_code == 0
    plain = json.loads((tmp_path / "plain.json").read_text())
    home = str(Path.home())
    for text in _strings(plain):
        assert not text.startswith("/") and str(tmp_path) not in text and ":///" + "/" not in text, text
        assert home not in text or home == "/", text
    assert plain["provenance"]["storage"] == "sqlite:///study.db"
    assert plain["provenance"]["space_source"] == "space.yaml"
    with_paths = (tmp_path / "paths.json").read_text()
    assert str(db) in with_paths and str(space_file) in with_paths          # asked for: kept
