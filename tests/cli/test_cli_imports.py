"""Light commands start light: `show`, `studies` and `export --check` import neither Ray, torch,
matplotlib, optuna-dashboard nor the models/evaluators (start-up time is most of `show`)."""
from __future__ import annotations

import json
import subprocess
import sys

from cli_helpers import SYNTH_STUDY

HEAVY = ("torch", "ray", "matplotlib", "optuna_dashboard", "attnsearch.models", "attnsearch.evaluators")

PROBE = """
import json, sys
from typer.testing import CliRunner
from attnsearch.cli import app
before = sorted(m for m in {heavy!r} if m in sys.modules)
result = CliRunner().invoke(app, {args!r})
after = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"exit": result.exit_code, "before": before, "after": after, "out": result.output[-300:]}}))
"""


def _modules_after(args: list[str]) -> dict:
    code = PROBE.format(heavy=HEAVY, args=[str(a) for a in args])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_cli_and_search_is_light():
    code = ("import sys, attnsearch.cli, attnsearch.search, attnsearch.search.table; "
            f"print(sorted(m for m in {HEAVY!r} + ('optuna',) if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_show_and_studies_do_not_import_heavy_modules(url):
    for args in (["show", SYNTH_STUDY, "--storage", url], ["show", SYNTH_STUDY, "--all", "--json", "--storage", url],
                 ["studies", "--storage", url]):
        seen = _modules_after(args)
        assert seen["exit"] == 0, seen["out"]
        assert seen["after"] == [], (args, seen["after"])


def test_export_check_does_not_import_ray_or_matplotlib(url, tmp_path):
    out = tmp_path / "best.json"
    seen = _modules_after(["export", SYNTH_STUDY, "--out", out, "--storage", url])
    assert seen["exit"] == 0, seen["out"]
    seen = _modules_after(["export", "--check", out])
    assert seen["exit"] == 0, seen["out"]
    assert not {"ray", "matplotlib", "optuna_dashboard"} & set(seen["after"]), seen["after"]
