"""Every bad input the issue names: one-line error naming the problem, exit code 2, no
traceback, database unchanged (and no database created by a command that only reads)."""
from __future__ import annotations

import json
import textwrap

import pytest
from cli_helpers import SYNTH_STUDY, assert_user_error, db_digest

GOOD_SPACE = textwrap.dedent("""\
    target: {d_model: 256, n_layers: 4, n_heads: 4, head_dim: 64, vocab_size: 1000, context_len: 4096}
    mechanisms: {full: {}, sliding_window: {window: [256, 1024]}}
    layout: {mode: per_layer}
""")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("target: [1, 2\nmechanisms: {full: {}}\n", ["malformed YAML"]),
    ("- just\n- a list\n", ["must be a mapping"]),
    (GOOD_SPACE.replace("full: {}", "full: {}, warp_attention: {}"), ["warp_attention", "unknown mechanism"]),
    (GOOD_SPACE + "colour: blue\n", ["colour", "unknown field"]),
    (GOOD_SPACE.replace("sliding_window: {window: [256, 1024]}", "sliding_window: {windw: 256}"),
     ["windw", "unknown field"]),
    (GOOD_SPACE.replace("vocab_size: 1000, ", ""), ["vocab_size", "required"]),
    (GOOD_SPACE + "constraints: {min_full_layers: 9}\n", ["min_full_layers"]),           # > n_layers
    (GOOD_SPACE + "constraints: {max_state_bytes: 10}\n", ["max_state_bytes"]),          # nothing that small
    (GOOD_SPACE + "constraints: {min_throughput: 1.0e15}\n", ["min_throughput"]),        # nothing that fast
    (GOOD_SPACE.replace("vocab_size", "gpu: Z80, vocab_size"), ["gpu", "Z80"]),
], ids=["malformed-yaml", "not-a-mapping", "unknown-mechanism", "unknown-field", "unknown-param",
        "missing-field", "impossible-min-full", "impossible-state", "impossible-throughput", "unknown-gpu"])
def test_bad_space_file_is_refused_before_anything_runs(invoke, tmp_path, monkeypatch, text, words):
    monkeypatch.chdir(tmp_path)
    space = write(tmp_path, "space.yaml", text)
    assert_user_error(invoke("run", space, "--trials", 3), "space.yaml", *words)
    assert not (tmp_path / "attnsearch.db").exists()     # nothing trained, nothing written


def test_missing_space_file(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_user_error(invoke("run", "nope.yaml"), "nope.yaml", "no such space file")
    assert not (tmp_path / "attnsearch.db").exists()


@pytest.mark.parametrize("args, words", [
    (["--workers", "0"], ["--workers", ">= 1"]),
    (["--trials", "0"], ["--trials"]),
    (["--timeout", "-5"], ["--timeout"]),
    (["--device", "tpu"], ["--device", "tpu"]),
])
def test_bad_run_options(invoke, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    space = write(tmp_path, "space.yaml", GOOD_SPACE)
    assert_user_error(invoke("run", space, *args), *words)
    assert not (tmp_path / "attnsearch.db").exists()


@pytest.mark.parametrize("command", [
    ["show", "nosuch"], ["show", "nosuch", "--all", "--json"], ["export", "nosuch"], ["plot", "nosuch"],
    ["delete", "nosuch", "--yes"],
])
def test_unknown_study(invoke, url, db, command):
    before = db_digest(db)
    assert_user_error(invoke(*command, "--storage", url), "nosuch")
    assert db_digest(db) == before


@pytest.mark.parametrize("command", [["studies"], ["show", "x"], ["export", "x"], ["plot", "x"],
                                     ["delete", "x", "--yes"], ["dashboard"]])
def test_read_commands_never_create_a_database(invoke, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNSEARCH_STORAGE", raising=False)
    assert_user_error(invoke(*command), "no database", "attnsearch.db")
    assert list(tmp_path.iterdir()) == []


def test_existing_study_with_a_different_space_needs_resume(invoke, url, db, tmp_path, ray_cluster):
    space = write(tmp_path, "other.yaml", GOOD_SPACE)
    before = db_digest(db)
    assert_user_error(invoke("run", space, "--study", SYNTH_STUDY, "--storage", url, "--trials", 3),
                      SYNTH_STUDY, "different space")
    assert db_digest(db) == before
    # --resume continues it anyway (here with a budget already met: nothing new runs)
    from attnsearch import search

    n = search.load_study_summary(SYNTH_STUDY, url).n_trials
    resumed = invoke("run", space, "--study", SYNTH_STUDY, "--storage", url, "--trials", 3, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "already has its 3 trials" in resumed.output
    assert search.load_study_summary(SYNTH_STUDY, url).n_trials == n


@pytest.mark.parametrize("storage, words, read_words", [
    ("sqlite:////nonexistent-dir/sub/x.db", ["cannot open storage"], ["no database", "/nonexistent-dir"]),
    ("mysql://u@localhost/db", ["mysql", "not supported"], None),
    ("not a url", ["not a database URL"], None),
    ("postgresql+psycopg://alice:s3cr3t-pw@127.0.0.1:1/db", ["cannot open storage", "***"], None),
])
def test_storage_that_cannot_be_opened(invoke, tmp_path, monkeypatch, storage, words, read_words):
    monkeypatch.chdir(tmp_path)
    space = write(tmp_path, "space.yaml", GOOD_SPACE)
    err = assert_user_error(invoke("run", space, "--storage", storage, "--trials", 2), *words)
    assert "s3cr3t-pw" not in err
    err = assert_user_error(invoke("studies", "--storage", storage), *(read_words or words))
    assert "s3cr3t-pw" not in err
    assert list(tmp_path.iterdir()) == [space]


def test_export_of_a_study_without_completed_trials(invoke, url, db):
    from attnsearch import search
    from attnsearch.search.study import create_or_load

    create_or_load(search.default_space(), "empty", url)
    before = db_digest(db)
    assert_user_error(invoke("export", "empty", "--storage", url), "empty", "no completed trial")
    assert_user_error(invoke("plot", "empty", "--storage", url), "empty", "no completed trial")
    assert db_digest(db) == before
    assert not (db.parent / "best.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--min-throughput", "1e15"], ["throughput >= 1e+15"]),
    (["--max-state-bytes", "1"], ["state_bytes <= 1"]),
    (["--trial", "999"], ["trial 999"]),
    (["--pick", "cheapest"], ["--pick", "cheapest", "knee"]),
    (["--min-throughput", "-3"], ["--min-throughput"]),
    (["--out", "missing-dir/best.json"], ["missing-dir"]),
])
def test_export_filters_no_trial_meets(invoke, url, db, args, words):
    before = db_digest(db)
    assert_user_error(invoke("export", SYNTH_STUDY, "--storage", url, *args), *words)
    assert db_digest(db) == before
    assert not (db.parent / "best.json").exists()


def test_export_needs_a_study_or_check(invoke, url):
    assert_user_error(invoke("export", "--storage", url), "STUDY")


@pytest.fixture
def good_export(invoke, url, tmp_path):
    out = tmp_path / "best.json"
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--out", out).exit_code == 0
    return json.loads(out.read_text())


def _break(doc, how):
    doc = json.loads(json.dumps(doc))
    if how == "mechanism":
        doc["arch"]["layers"][0]["mechanism"] = "warp"
    elif how == "window":
        doc["arch"]["layers"][0] = {"mechanism": "sliding_window", "params": {"window": 0}}
    elif how == "layer_types":
        doc["layer_types"][0] = "quantum_attention"
    elif how == "n_layers":
        doc["arch"]["n_layers"] += 1
    elif how == "version":
        doc["export_schema_version"] = 99
    elif how == "missing":
        del doc["provenance"]
    elif how == "extra":
        doc["arch"]["colour"] = "blue"
    return doc


@pytest.mark.parametrize("how, words", [
    ("mechanism", ["arch.layers[0]", "warp"]), ("window", ["arch.layers[0]", "window", "got 0"]), ("layer_types", ["layer_types"]),
    ("n_layers", ["n_layers"]), ("version", ["export_schema_version", "99"]), ("missing", ["provenance"]),
    ("extra", ["colour", "unknown field"]),
])
def test_check_refuses_an_invalid_config(invoke, good_export, tmp_path, how, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_break(good_export, how)))
    assert_user_error(invoke("export", "--check", path), "bad.json", *words)


@pytest.mark.parametrize("text, words", [("{not json", ["malformed JSON", "line 1"]), ("[1, 2]", ["JSON object"]),
                                         ('{"d_model": 64}', ["required"])])
def test_check_refuses_malformed_json(invoke, tmp_path, text, words):
    path = write(tmp_path, "bad.json", text)
    assert_user_error(invoke("export", "--check", path), *words)
    assert_user_error(invoke("export", "--check", tmp_path / "absent.json"), "no such file")


def test_bad_json_config_in_build_model_is_one_config_error(good_export, tmp_path):
    from attnsearch.models import build_model
    from attnsearch.space import ConfigError

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_break(good_export, "mechanism")))
    with pytest.raises(ConfigError, match="warp"):
        build_model(str(path))


def test_dashboard_bad_port(invoke, url):
    assert_user_error(invoke("dashboard", "--storage", url, "--port", "70000"), "--port")


def test_init_into_a_missing_folder(invoke, tmp_path):
    assert_user_error(invoke("init", tmp_path / "no" / "space.yaml"), "does not exist")
