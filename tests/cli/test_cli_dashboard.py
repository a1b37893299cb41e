"""`attnsearch dashboard`: the server lists the study and its trials over its JSON API, and a real
headless Chromium renders the trial list (asserted on the DOM text; screenshot kept in tmp)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from cli_helpers import FAILING_TRIAL, SYNTH_STUDY, assert_user_error

SERVER_START_S = 90        # generous: the CI machine may be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def server(url, tmp_path):
    """`attnsearch dashboard` in a subprocess on a free port; yields its base URL."""
    port = free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "attnsearch.cli", "dashboard", "--storage", url,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                get_json(f"{base}/api/studies")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"dashboard did not start: {(tmp_path / 'dashboard.log').read_text()}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def study_id(base: str) -> int:
    studies = get_json(f"{base}/api/studies")["study_summaries"]
    return next(s["study_id"] for s in studies if s["study_name"] == SYNTH_STUDY)


def test_api_lists_the_study_with_its_trials_and_note(server, url):
    from attnsearch import search

    studies = get_json(f"{server}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [SYNTH_STUDY]
    detail = get_json(f"{server}/api/studies/{study_id(server)}")
    expected = search.pareto_table(SYNTH_STUDY, url, all=True)
    assert len(detail["trials"]) == len(expected)
    assert detail["objective_names"] == ["quality", "throughput"]
    attrs = {a["key"]: a["value"] for a in detail["trials"][0]["user_attrs"]}
    assert attrs["layout"] == expected[0]["layout"] and "metrics" in attrs
    failed = next(t for t in detail["trials"] if t["number"] == FAILING_TRIAL)
    assert "injected failure" in {a["key"]: a["value"] for a in failed["user_attrs"]}["fail_reason"]
    assert "## attnsearch study" in detail["note"]["body"]


def chromium() -> str | None:
    path = os.environ.get("ATTNSEARCH_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).exists() else None


def run_chromium(binary: str, tmp_path: Path, page: str, *extra: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
             "--virtual-time-budget=20000", "--window-size=1400,1000"]
    return subprocess.run([binary, *flags, *extra, page], capture_output=True, text=True, timeout=180)


def dom_text(html: str) -> str:
    html = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.mark.browser
def test_chromium_renders_the_trial_list(server, url, tmp_path):
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but no Chromium was found (set ATTNSEARCH_TEST_CHROMIUM)")
        pytest.skip("no Chromium on this machine")
    from attnsearch import search

    page = f"{server}/dashboard/studies/{study_id(server)}/trials"
    dom = run_chromium(binary, tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom_text(dom.stdout)
    rows = search.pareto_table(SYNTH_STUDY, url, all=True)
    assert f"{len(rows)} Trials" in text, text[:2000]
    for row in rows:
        assert f"Trial {row['number']} " in text, row["number"]
    assert "Fail" in text and "Complete" in text
    assert rows[0]["layout"] in text                  # the selected trial's user attrs are shown
    # the study page: the Pareto-front plot labelled with the study's metric names
    history = run_chromium(binary, tmp_path, f"{server}/dashboard/studies/{study_id(server)}", "--dump-dom")
    text = dom_text(history.stdout)
    assert "Pareto Front" in text and "Objective X: quality" in text and "throughput" in text, text[:2000]
    shot = tmp_path / "dashboard.png"
    taken = run_chromium(binary, tmp_path, page, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dashboard_warns_when_binding_every_interface(invoke, url, monkeypatch):
    import attnsearch.search.dashboard as dash

    calls = []
    monkeypatch.setattr(dash, "serve", lambda storage, host, port: calls.append((host, port)))
    result = invoke("dashboard", "--storage", url, "--host", "0.0.0.0", "--port", "9999")
    assert result.exit_code == 0
    assert "Warning" in result.stderr and "0.0.0.0" in result.stderr
    assert calls == [("0.0.0.0", 9999)]
    local = invoke("dashboard", "--storage", url)
    assert local.exit_code == 0 and "Warning" not in local.stderr
    assert calls[-1] == ("127.0.0.1", 8080)          # localhost by default


def test_dashboard_port_in_use(invoke, url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_user_error(invoke("dashboard", "--storage", url, "--port", port), str(port))
