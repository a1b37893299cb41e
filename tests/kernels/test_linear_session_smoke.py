"""benchmarks/linear_session.py end to end on the CPU (--smoke: interpreter, toy shapes), so that the plumbing a
GPU call depends on (phase A's parallel gradient checks, each as its fp32 and its bf16 process; the candidates'
timing beside the default; adoption) is known to work before device time is spent on it."""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "..", "benchmarks", "linear_session.py")


def test_session_smoke_checks_times_and_adopts(tmp_path):
    env = dict(os.environ, LINEAR_CANDIDATES="dg_prefix", LINEAR_GRADCHECKS="dg_prefix", LINEAR_ADOPT="dg_prefix",
               LINEAR_OPS="linear,mamba2", PYTHONPATH=os.path.join(HERE, "..", ".."))
    out = tmp_path / "session"
    run = subprocess.run([sys.executable, SCRIPT, str(out), "--smoke", "--jobs", "2"], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((out / "session.json").read_text())
    # one gradient check, as two processes (fp32, bf16), both finished; its fp32 cases ran and passed
    assert report["compile_exit_codes"]["gradcheck 0_fp32"] == 0
    assert report["compile_exit_codes"]["gradcheck 0_bf16"] == 0
    assert (out / "gc_0_fp32.json").exists() and (out / "gc_0_bf16.json").exists()
    gc = report["gradcheck"]
    assert gc["all_ok"] and gc["n"] > 0
    assert all(r["path"] == "dg_prefix" and r["dtype"] == "float32" for r in gc["results"])
    # the candidate timed beside the default for the op it changes, and weighed for adoption
    assert set(report["vs_default"]["dg_prefix"]) == {"mamba2"}
    picks = {p["group"]: p for p in report["adopt"]}
    scored = picks["linear_attention"]["scored"]
    assert [w["candidate"] for w in scored] == ["dg_prefix"] and scored[0]["gradcheck"]
