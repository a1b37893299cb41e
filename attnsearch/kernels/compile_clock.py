"""How long this process has spent compiling Triton kernels (for the time split of a study).

Triton calls ``knobs.compilation.listener`` after each compilation that was not found in its
on-disk cache, with the stage times. ``compile_seconds()`` installs a listener on first use (it
keeps calling any listener that was there before) and returns the running total in seconds.
On a Triton without the hook it returns None: the split then has no compile share.
"""
from __future__ import annotations

import threading

_lock = threading.Lock()
_total_us = 0
_installed: bool | None = None


def _install() -> bool:
    try:
        from triton import knobs
    except Exception:      # no Triton, or one older than the knobs module
        return False
    comp = getattr(knobs, "compilation", None)
    if comp is None or not hasattr(comp, "listener"):
        return False
    previous = comp.listener

    def listener(*, src, metadata, metadata_group, times, cache_hit):
        global _total_us
        if not cache_hit:
            with _lock:
                _total_us += int(getattr(times, "total", 0))
        if previous is not None:
            previous(src=src, metadata=metadata, metadata_group=metadata_group, times=times, cache_hit=cache_hit)

    comp.listener = listener
    return True


def compile_seconds() -> float | None:
    """Seconds of Triton compilation in this process so far (None where Triton cannot say)."""
    global _installed
    if _installed is None:
        _installed = _install()
    return _total_us / 1e6 if _installed else None
