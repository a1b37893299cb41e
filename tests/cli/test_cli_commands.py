"""Every CLI command on a synthetic study (CliRunner): what it prints, writes and refuses."""
from __future__ import annotations

import json

import pytest
from cli_helpers import FAILING_TRIAL, SYNTH_STUDY, SYNTH_TRIALS, db_digest

from attnsearch import __version__


def test_version_and_help(invoke):
    assert invoke("--version").output.strip() == f"attnsearch {__version__}"
    assert invoke("version").output.strip() == f"attnsearch {__version__}"
    out = invoke("--help").output
    for command in ("run", "init", "studies", "show", "delete", "export", "plot", "dashboard"):
        assert command in out
    assert "--pick" in invoke("export", "--help").output


def test_init_writes_a_space_that_loads(invoke, tmp_path, monkeypatch):
    from attnsearch import search

    monkeypatch.chdir(tmp_path)
    result = invoke("init")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "space.yaml").read_text()
    # documents every field of the format
    for field in ("target:", "proxy:", "layout:", "periods:", "mechanisms:", "constraints:", "objectives:",
                  "sampler:", "evaluation:", "seed:", "per_layer", "pattern", "nsga2", "kernel:", "state_bytes"):
        assert field in text, field
    space = search.load_space(tmp_path / "space.yaml")
    assert space.target.n_layers == 24 and "full" in space.mechanisms
    # a second init refuses to overwrite, --force overwrites
    again = invoke("init")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert invoke("init", "space.yaml", "--force").exit_code == 0
    assert invoke("init", tmp_path / "other.yaml").exit_code == 0


def test_run_check_validates_without_writing(invoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invoke("init", "s.yaml")
    result = invoke("run", "s.yaml", "--check")
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "baselines that fit" in result.output
    assert not (tmp_path / "attnsearch.db").exists()


def test_studies_lists_the_study(invoke, url, db):
    result = invoke("studies", "--storage", url)
    assert result.exit_code == 0, result.output
    assert SYNTH_STUDY in result.output and "quality (max)" in result.output
    items = json.loads(invoke("studies", "--storage", url, "--json").output)
    assert [s["name"] for s in items] == [SYNTH_STUDY]
    assert items[0]["objectives"] == ["quality", "throughput"]


def test_storage_from_environment_variable(invoke, url):
    result = invoke("studies", env={"ATTNSEARCH_STORAGE": url})
    assert result.exit_code == 0 and SYNTH_STUDY in result.output


def test_storage_default_is_attnsearch_db_in_the_working_directory(invoke, db, tmp_path):
    db.rename(tmp_path / "attnsearch.db")
    result = invoke("studies")
    assert result.exit_code == 0 and SYNTH_STUDY in result.output and "sqlite:///attnsearch.db" in result.output


def test_show_front_all_and_json(invoke, url):
    from attnsearch import search

    front = search.pareto_table(SYNTH_STUDY, url)
    result = invoke("show", SYNTH_STUDY, "--storage", url)
    assert result.exit_code == 0, result.output
    for row in front:
        assert row["layout"] in result.output
    assert "Pareto front" in result.output and "tok/s" in result.output
    every = invoke("show", SYNTH_STUDY, "--storage", url, "--all")
    assert every.exit_code == 0
    # baselines are marked; the failed trial shows its reason
    assert "* gemma3" in every.output and "* transformer" in every.output
    assert "FAIL" in every.output and "injected failure" in every.output
    rows = json.loads(invoke("show", SYNTH_STUDY, "--storage", url, "--all", "--json").output)
    assert len(rows) >= SYNTH_TRIALS
    assert {r["number"] for r in rows if r["state"] == "FAIL"} == {FAILING_TRIAL}
    assert {r["baseline"] for r in rows if r["baseline"]} >= {"transformer", "gemma3", "jamba"}
    front_json = json.loads(invoke("show", SYNTH_STUDY, "--storage", url, "--json").output)
    assert [r["number"] for r in front_json] == [r["number"] for r in front]
    assert all(r["pareto"] for r in front_json)


def test_delete_asks_and_yes_skips_the_question(invoke, url, db):
    from attnsearch import search

    before = db_digest(db)
    kept = invoke("delete", SYNTH_STUDY, "--storage", url, input="n\n")
    assert kept.exit_code == 1 and "nothing deleted" in kept.output
    assert db_digest(db) == before
    gone = invoke("delete", SYNTH_STUDY, "--storage", url, input="y\n")
    assert gone.exit_code == 0, gone.output
    assert search.list_studies(url) == []


def test_delete_yes(invoke, url):
    from attnsearch import search

    result = invoke("delete", SYNTH_STUDY, "--storage", url, "--yes")
    assert result.exit_code == 0 and "deleted" in result.output
    assert search.list_studies(url) == []


@pytest.mark.parametrize("pick", ["knee", "best-quality", "fastest", "smallest-state"])
def test_export_picks_build_a_model(invoke, url, tmp_path, pick):
    from attnsearch import search
    from attnsearch.models import build_model

    out = tmp_path / f"{pick}.json"
    result = invoke("export", SYNTH_STUDY, "--storage", url, "--pick", pick, "--out", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    expected = search.select_trial(SYNTH_STUDY, url, policy=pick)
    assert doc["provenance"]["trial"] == expected["number"]
    assert doc["layout"] == expected["layout"]
    model = build_model(str(out))
    assert model.config.layout_string() == expected["layout"]
    assert invoke("export", "--check", out).exit_code == 0


def test_export_document_contents(invoke, url, db, tmp_path):
    out = tmp_path / "best.json"
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--out", out).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["format"] == "attnsearch-export" and doc["export_schema_version"] == 1
    assert doc["target"]["d_model"] == 768 and doc["target"]["gpu"] == "H100"
    n = doc["target"]["n_layers"]
    assert len(doc["layers"]) == n == len(doc["layer_types"]) == len(doc["layout"])
    allowed = {"full_attention", "sliding_attention", "linear_attention", "mamba", "sparse_attention"}
    assert set(doc["layer_types"]) <= allowed
    for letter, kind, layer in zip(doc["layout"], doc["layer_types"], doc["layers"]):
        assert {"mechanism", "params", "kernel_config", "layer_type"} <= set(layer)
        assert layer["layer_type"] == kind
        if letter == "F":
            assert kind == "full_attention"
        if letter == "S":
            assert kind == "sliding_attention" and "window" in layer["params"]
    assert {"quality", "throughput", "state_bytes"} <= set(doc["metrics"])
    prov = doc["provenance"]
    assert prov["study"] == SYNTH_STUDY and prov["gpu"] == "H100"
    assert {"torch", "optuna", "python"} <= set(prov["software"]["exported_with"])
    assert prov["created_at"] and prov["trial_completed_at"]
    # no absolute local paths unless asked
    assert prov["storage"] == "sqlite:///study.db"
    assert str(tmp_path) not in out.read_text()
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--out", out, "--include-paths").exit_code == 0
    assert json.loads(out.read_text())["provenance"]["storage"] == url


def test_export_trial_and_filters(invoke, url, tmp_path):
    from attnsearch import search

    rows = [r for r in search.pareto_table(SYNTH_STUDY, url, all=True) if r["state"] == "COMPLETE"]
    target = rows[2]
    out = tmp_path / "t.json"
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--trial", target["number"], "--out", out).exit_code == 0
    assert json.loads(out.read_text())["provenance"]["trial"] == target["number"]
    # a throughput floor: the chosen trial meets it
    speeds = sorted(r["metrics"]["throughput"] for r in rows)
    floor = speeds[len(speeds) // 2]
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--min-throughput", floor, "--pick", "best-quality",
                  "--out", out).exit_code == 0
    assert json.loads(out.read_text())["metrics"]["throughput"] >= floor
    cap = sorted(r["metrics"]["state_bytes"] for r in rows)[1]
    assert invoke("export", SYNTH_STUDY, "--storage", url, "--max-state-bytes", cap, "--out", out).exit_code == 0
    assert json.loads(out.read_text())["metrics"]["state_bytes"] <= cap


def test_plot_writes_images(invoke, url, tmp_path):
    png = tmp_path / "pareto.png"
    result = invoke("plot", SYNTH_STUDY, "--storage", url, "--out", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    svg = tmp_path / "pareto.svg"
    assert invoke("plot", SYNTH_STUDY, "--storage", url, "--out", svg).exit_code == 0
    text = svg.read_text()
    # axes named with units, baselines labelled, hypervolume history panel
    for label in ("tokens/s", "quality score", "MiB", "gemma3", "hypervolume", "Pareto front"):
        assert label in text, label


def test_study_note_and_metric_names_for_the_dashboard(url):
    import optuna
    from optuna_dashboard import get_note

    from attnsearch.search.study import load_study

    study = load_study(SYNTH_STUDY, url)
    note = get_note(study)
    assert "## attnsearch study" in note and "d_model **768**" in note and "gated_deltanet" in note
    assert "quality (maximize)" in note and "gemma3" in note
    assert study.metric_names == ["quality", "throughput"]
    trial = study.trials[0]
    assert {"layout", "metrics", "arch"} <= set(trial.user_attrs)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed and "injected failure" in failed[0].user_attrs["fail_reason"]


def test_binds_everywhere():
    from attnsearch.search.dashboard import binds_everywhere

    assert binds_everywhere("0.0.0.0") and binds_everywhere("::") and binds_everywhere("[::]")
    assert not binds_everywhere("127.0.0.1") and not binds_everywhere("localhost")
    assert not binds_everywhere("::1")


def test_progress_view_line_without_a_terminal():
    from rich.console import Console

    from attnsearch.cli import ProgressView
    from attnsearch.search import Progress

    console = Console(record=True, width=200, force_terminal=False)
    with ProgressView(console, deadline_s=600) as view:
        view(Progress(study_name="s", n_trials=10, counted=4, complete=3, failed=1, pruned=2, reused=1,
                      running=2, elapsed_s=30.0, eta_s=60.0, front_size=3, hypervolume=0.5,
                      last={"number": 3, "state": "COMPLETE", "layout": "SSSF",
                            "metrics": {"quality": 0.5, "throughput": 2.5e5}}))
    text = console.export_text()
    for part in ("trials 4/10", "done 3", "running 2", "failed 1", "elapsed", "ETA 01:00",
                 "front 3", "hypervolume 0.5", "trial #3 COMPLETE SSSF", "250k tok/s"):
        assert part in text, part


def test_readme_space_example_and_commands_are_real():
    import re
    from pathlib import Path

    import yaml

    from attnsearch import search
    from attnsearch.cli import app

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.findall(r"```yaml\n(.*?)```", readme, re.S)[0]
    space = search.load_space(yaml.safe_load(block))
    assert space.target.n_layers == 24 and len(space.mechanisms) == 6
    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    commands |= {g.name for g in app.registered_groups}          # sub-apps such as `cache`
    for used in set(re.findall(r"^attnsearch (\w+)", readme, re.M)):
        assert used in commands, used


def test_export_provenance_hides_passwords_and_local_paths():
    from attnsearch.search.export import public_path, public_storage

    pg = public_storage("postgresql+psycopg://alice:s3cr3t@db.example:5432/studies")
    assert "s3cr3t" not in pg and "***" in pg and "db.example" in pg
    assert "s3cr3t" not in public_storage("postgresql+psycopg://alice:s3cr3t@db.example/s", include_paths=True)
    assert public_storage("sqlite:////home/me/work/attnsearch.db") == "sqlite:///attnsearch.db"
    assert public_storage("sqlite:///rel/dir/a.db") == "sqlite:///a.db"
    assert public_storage("sqlite:////home/me/a.db", include_paths=True) == "sqlite:////home/me/a.db"
    assert public_path("/home/me/space.yaml") == "space.yaml" and public_path("<space>") == "<space>"


def test_fast_table_matches_the_optuna_api(url):
    from attnsearch import search
    from attnsearch.search.table import _via_optuna, study_table

    for every in (False, True):
        fast = study_table(SYNTH_STUDY, url, every=every, heavy=True)
        assert fast.rows == search.pareto_table(SYNTH_STUDY, url, all=every)
        slow = _via_optuna(url, SYNTH_STUDY, every)
        assert fast.hypervolume == pytest.approx(slow.hypervolume)
        assert fast.front_size == slow.front_size
        assert {k: v for k, v in fast.counts.items() if v} == {k: v for k, v in slow.counts.items() if v}
    light = study_table(SYNTH_STUDY, url, every=True)
    assert all(r["arch"] is None for r in light.rows)      # big attributes only when asked
