"""The Triton compile clock: sums the stage times Triton reports for real compilations (not
cache hits) and keeps calling a listener that was installed before it."""
from types import SimpleNamespace

import pytest

from attnsearch.kernels import compile_clock


def test_compile_clock_sums_misses_and_chains(monkeypatch):
    knobs = pytest.importorskip("triton.knobs")
    if not hasattr(getattr(knobs, "compilation", None), "listener"):
        pytest.skip("this Triton has no compilation listener")
    seen = []
    monkeypatch.setattr(knobs.compilation, "listener", lambda **kw: seen.append(kw["cache_hit"]))
    monkeypatch.setattr(compile_clock, "_installed", None)
    monkeypatch.setattr(compile_clock, "_total_us", 0)
    assert compile_clock.compile_seconds() == 0.0
    hook = knobs.compilation.listener
    call = dict(src=None, metadata={}, metadata_group={})
    hook(**call, times=SimpleNamespace(total=1_500_000), cache_hit=False)
    hook(**call, times=SimpleNamespace(total=9_000_000), cache_hit=True)     # loaded from disk: not compile time
    assert compile_clock.compile_seconds() == pytest.approx(1.5)
    assert seen == [False, True]                                           # the earlier listener still hears both
